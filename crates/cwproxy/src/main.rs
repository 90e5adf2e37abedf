//! `cwproxy [command args…]`: normal mode without arguments, inspector mode with them.

use std::process::ExitCode;

const USAGE: &str = "\
Usage: cwproxy                 proxy PROXY_PORT to APP_HOST:APP_PORT (normal mode)
       cwproxy COMMAND [ARGS…] start COMMAND, detect its listening port, proxy to it (inspector mode)
       cwproxy --check         validate the configuration, print it resolved; exit 0, or 1 with every error
       cwproxy --help | --version

Configuration is read from the environment only:
  PROXY_PORT (8081)  APP_HOST (127.0.0.1)  APP_PORT (8080)  APP_NAME (metadata, hostname, cwproxy)
  PROXY_HOST (every interface, dual stack)  UPSTREAM_HEADER_TIMEOUT (30s, from the end of the request body)
  UPSTREAM_CONNECT_TIMEOUT (5s)  CLIENT_HEADER_TIMEOUT (5s)  CLIENT_IDLE_TIMEOUT (60s)
  HEALTH_URLS ({APP_HOST}:{APP_PORT}/health)  HEALTH_INTERVAL (30s)  CAPTURE_BODY_LIMIT (65536)
  LOG_GROUP_NAME (/app/log/{APP_NAME})  HEALTH_LOG_GROUP_NAME (/app/log/{APP_NAME}/health)
  BACKEND_RETRY_MAX_ATTEMPTS (2)  BACKEND_RETRY_INITIAL_BACKOFF (50ms)  BACKEND_RETRY_MAX_BACKOFF (250ms)
  BACKEND_RETRY_BACKOFF_MULTIPLIER (2)  BACKEND_RETRY_METHODS (GET,HEAD,OPTIONS)
  BACKEND_RETRY_STATUS_CODES (500-599)  BACKEND_RETRY_ON_TRANSPORT_ERRORS (false)
  BACKEND_RETRY_BODY_BUFFER_BYTES (65536)
  INSPECTOR_DETECT_TIMEOUT (60s: port detection, or with APP_PORT the wait until the app accepts)
  INSPECTOR_STOP_GRACE (10s)  INSPECTOR_CHILD_STDOUT (inherit | stderr: keep stdout JSON lines only)
  METADATA_DETECT_TIMEOUT (200ms)  CWPROXY_SERVICEACCOUNT_DIR (/var/run/secrets/kubernetes.io/serviceaccount)
{OUTPUT_HELP}{ADMIN_HELP}  AWS_REGION, AWS_DEFAULT_REGION (else runtime metadata), AWS credentials: the SDK default chain
  (environment, AWS_PROFILE with credential_process/SSO/assume-role, web identity (EKS IRSA), ECS,
  IMDS only on EC2 hosts or with AWS_EC2_METADATA_SERVICE_ENDPOINT; AWS_EC2_METADATA_DISABLED=true)
  Kubernetes metadata (for aws_meta, e.g. from the downward API): POD_NAME, POD_NAMESPACE (K8S_NAMESPACE),
  NODE_NAME (K8S_NODE_NAME), SERVICE_ACCOUNT (K8S_SERVICE_ACCOUNT),
  EKS_CLUSTER_NAME (KUBERNETES_CLUSTER_NAME, CLUSTER_NAME)

Every exchange becomes one JSON line with CloudWatch EMF metrics on stdout. With a region, the same
events also go to CloudWatch Logs (LOG_GROUP_NAME, HEALTH_LOG_GROUP_NAME) from bounded queues.
";

fn main() -> ExitCode {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    // Only these three exact flags are reserved; anything else is a command to launch.
    if args.len() == 1 && (args[0] == "--help" || args[0] == "--version") {
        if args[0] == "--help" {
            print!(
                "{}",
                USAGE
                    .replace("{OUTPUT_HELP}", cwproxy::output::HELP)
                    .replace("{ADMIN_HELP}", cwproxy::admin::HELP)
            );
        } else {
            println!("cwproxy {}", env!("CARGO_PKG_VERSION"));
        }
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cwproxy: start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async move {
        if args.len() == 1 && args[0] == "--check" {
            let report = cwproxy::app::check().await?;
            print!("{report}");
            Ok(0)
        } else if args.is_empty() {
            cwproxy::app::run_normal().await
        } else {
            let command = args.remove(0);
            cwproxy::app::run_inspector(command, args).await
        }
    });
    // Connections cut at the drain deadline may still hold tasks; do not wait for them.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(fatal) => {
            // One line per error (configuration errors come all at once), each in the
            // original's `cwproxy: <error>` form.
            for line in fatal.message.lines() {
                eprintln!("cwproxy: {line}");
            }
            ExitCode::from(u8::try_from(fatal.code).unwrap_or(1))
        }
    }
}
