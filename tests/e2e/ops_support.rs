//! Fixtures for the operations tests (reload, lifecycle, CLI, admin): config files
//! written by hand, admin calls, and checks on sockets and processes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{Request, StatusCode};

use crate::support::*;

/// A config preamble like `support::preamble`, with the runtime settings a test picks.
pub fn preamble_with(dir: &Path, watch_config: bool, shutdown_timeout: &str) -> String {
    format!(
        "[admin]\naddress = \"127.0.0.1:0\"\n[runtime]\nwatch_config = {watch_config}\nshutdown_timeout = \"{shutdown_timeout}\"\nmodule_cache = \"{}\"\n",
        dir.join("cache").display()
    )
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Writes `files` into a new folder of `volume` and points the volume's `..data`
/// link at it, as the kubelet updates a mounted ConfigMap or Secret: the visible
/// names are links through `..data` (made on the first call), and the swap is one
/// rename of a new link over it, so no event ever names them.
pub fn kubernetes_volume_update(volume: &std::path::Path, version: &str, files: &[(&str, &str)]) {
    use std::os::unix::fs::symlink;
    let folder = format!("..{version}");
    std::fs::create_dir(volume.join(&folder)).unwrap();
    for (name, text) in files {
        std::fs::write(volume.join(&folder).join(name), text).unwrap();
        let visible = volume.join(name);
        if std::fs::symlink_metadata(&visible).is_err() {
            symlink(format!("..data/{name}"), &visible).unwrap();
        }
    }
    symlink(&folder, volume.join("..data_tmp")).unwrap();
    std::fs::rename(volume.join("..data_tmp"), volume.join("..data")).unwrap();
}

/// One listener "main" whose requests go to cluster `target`, and two clusters
/// "a" and "b" (one endpoint each).
pub fn two_clusters(target: &str, a: SocketAddr, b: SocketAddr) -> String {
    format!(
        r#"
[[listeners]]
name = "main"
address = "127.0.0.1:0"
cluster = "{target}"

[[clusters]]
name = "a"
endpoints = ["{a}"]

[[clusters]]
name = "b"
endpoints = ["{b}"]
"#
    )
}

/// One listener "main" whose requests go to cluster "up", with one endpoint.
pub fn one_cluster(endpoint: SocketAddr) -> String {
    format!(
        r#"
[[listeners]]
name = "main"
address = "127.0.0.1:0"
cluster = "up"

[[clusters]]
name = "up"
endpoints = ["{endpoint}"]
"#
    )
}

/// `POST` to an admin URL; the status and the body as text.
pub async fn admin_post(url: &str) -> (StatusCode, String) {
    let (status, _, body) = send(&h1(), Request::post(url).body(empty()).unwrap()).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// `POST /reload` on a proxy started in this process.
pub async fn reload(proxy: &Proxy) -> (StatusCode, String) {
    admin_post(&proxy.admin_url("/reload")).await
}

/// What `fetch` got: the status, the `x-backend` header (empty when absent) and the
/// body; or why the request failed.
pub type Fetched = Result<(StatusCode, String, String), String>;

/// A GET that reports failure as a value.
pub async fn fetch(client: &TestClient, url: &str) -> Fetched {
    let resp = client
        .request(Request::get(url).body(empty()).unwrap())
        .await
        .map_err(|e| format!("request failed: {e:?}"))?;
    let status = resp.status();
    let backend = resp
        .headers()
        .get("x-backend")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .map_err(|e| format!("response body failed: {e:?}"))?
        .to_bytes();
    Ok((status, backend, String::from_utf8_lossy(&body).into_owned()))
}

/// `fetch` in the background.
pub fn spawn_get(client: TestClient, url: String) -> tokio::task::JoinHandle<Fetched> {
    tokio::spawn(async move { fetch(&client, &url).await })
}

/// The `x-backend` of a 200 response, or why there is none, so callers can count
/// failures instead of panicking.
pub async fn answering_backend(client: &TestClient, url: &str) -> Result<String, String> {
    match fetch(client, url).await? {
        (StatusCode::OK, backend, _) => Ok(backend),
        (status, _, body) => Err(format!("status {status}: {body}")),
    }
}

/// Whether a TCP connection to `addr` is refused.
pub async fn refuses_connections(addr: SocketAddr) -> bool {
    matches!(
        tokio::net::TcpStream::connect(addr).await,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

/// Runs the `weft` binary to completion (a minute at most): exit status, stdout, stderr.
pub async fn run_weft(args: &[&str]) -> (std::process::ExitStatus, String, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(weft_bin())
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("weft {args:?} did not finish"))
    .expect("run weft");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Pipes `text` to `promtool check metrics`; whether it passed, and what it said.
pub async fn promtool_check(text: &str) -> (bool, String) {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("promtool (installed by .ci/setup from the apt package prometheus)");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(text.as_bytes()).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Waits for a child process to exit, up to `within`.
pub async fn exits_within(
    child: &mut tokio::process::Child,
    within: Duration,
) -> Option<std::process::ExitStatus> {
    tokio::time::timeout(within, child.wait())
        .await
        .ok()
        .map(|r| r.expect("wait for weft"))
}
