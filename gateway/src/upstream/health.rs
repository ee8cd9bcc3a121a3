//! Active health checks: on the control thread's tokio runtime, one task per
//! cluster sends `GET <path>` to every endpoint each interval and flips the
//! endpoint's shared health flag after the configured number of consecutive
//! failures or successes. Workers only read the flag.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::{JoinHandle, JoinSet};

use super::{Cluster, HealthCheckSettings};

/// A response head larger than this fails the check.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;
const USER_AGENT: &str = "tollgate-health-check";

/// Starts checking `cluster`'s endpoints; None when it has no health check.
/// The task ends when the handle is aborted or the cluster is dropped (it
/// holds the cluster weakly, so a replaced snapshot's checks stop by
/// themselves). The endpoint list is read again every round, so DNS changes
/// are followed.
pub fn spawn(cluster: Arc<Cluster>) -> Option<JoinHandle<()>> {
    let settings = cluster.settings.health_check.clone()?;
    Some(tokio::spawn(run(Arc::downgrade(&cluster), Arc::new(settings))))
}

/// Consecutive results of one endpoint; only the current streak matters.
#[derive(Default)]
struct Streak {
    successes: u32,
    failures: u32,
}

async fn run(cluster: Weak<Cluster>, settings: Arc<HealthCheckSettings>) {
    let mut streaks: HashMap<SocketAddr, Streak> = HashMap::new();
    let mut ticker = tokio::time::interval(settings.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(cluster) = cluster.upgrade() else { return };
        let endpoints = cluster.endpoints().endpoints.clone();
        let mut checks = JoinSet::new();
        for endpoint in &endpoints {
            let settings = settings.clone();
            let addr = endpoint.addr;
            checks.spawn(async move { (addr, check(addr, &settings).await) });
        }
        // Drop the strong reference while waiting so a dropped cluster ends us.
        let name = cluster.name.clone();
        drop(cluster);
        let mut results = HashMap::new();
        while let Some(joined) = checks.join_next().await {
            if let Ok((addr, result)) = joined {
                results.insert(addr, result);
            }
        }
        streaks.retain(|addr, _| endpoints.iter().any(|e| e.addr == *addr));
        for endpoint in &endpoints {
            let Some(result) = results.remove(&endpoint.addr) else {
                continue;
            };
            let streak = streaks.entry(endpoint.addr).or_default();
            match result {
                Ok(()) => {
                    streak.failures = 0;
                    streak.successes = streak.successes.saturating_add(1);
                    if !endpoint.is_active_healthy() && streak.successes >= settings.healthy_threshold {
                        endpoint.set_active_healthy(true);
                        tracing::info!(cluster = %name, endpoint = %endpoint.addr, "endpoint passes health checks again; marked up");
                    }
                }
                Err(reason) => {
                    streak.successes = 0;
                    streak.failures = streak.failures.saturating_add(1);
                    if endpoint.is_active_healthy() && streak.failures >= settings.unhealthy_threshold {
                        endpoint.set_active_healthy(false);
                        tracing::warn!(cluster = %name, endpoint = %endpoint.addr, %reason, "endpoint fails health checks; marked down");
                    }
                }
            }
        }
    }
}

/// One check: connect, send the request, read the status. Err says why it failed.
async fn check(addr: SocketAddr, settings: &HealthCheckSettings) -> Result<(), String> {
    let status = tokio::time::timeout(settings.timeout, exchange(addr, settings))
        .await
        .map_err(|_| format!("no response within {:?}", settings.timeout))??;
    let expected = if settings.expected_statuses.is_empty() {
        (200..400).contains(&status)
    } else {
        settings.expected_statuses.contains(&status)
    };
    if expected {
        Ok(())
    } else {
        Err(format!("status {status}"))
    }
}

async fn exchange(addr: SocketAddr, settings: &HealthCheckSettings) -> Result<u16, String> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    let host = settings.host.clone().unwrap_or_else(|| addr.to_string());
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {USER_AGENT}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        settings.path
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut buffer = Vec::with_capacity(1024);
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&buffer) {
            Ok(httparse::Status::Complete(_)) => return response.code.ok_or_else(|| "no status".to_owned()),
            Ok(httparse::Status::Partial) if buffer.len() < MAX_RESPONSE_HEAD => {}
            Ok(httparse::Status::Partial) => return Err("response head too large".to_owned()),
            Err(e) => return Err(format!("malformed response: {e}")),
        }
        let read = stream
            .read_buf(&mut buffer)
            .await
            .map_err(|e| format!("receive: {e}"))?;
        if read == 0 {
            return Err("connection closed before a complete response head".to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU16, Ordering};
    use std::time::Duration;

    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    use super::*;
    use crate::upstream::{ClusterSettings, EndpointSpec};

    fn cluster(addr: SocketAddr, health_check: Option<HealthCheckSettings>) -> Arc<Cluster> {
        let settings = ClusterSettings {
            health_check,
            ..ClusterSettings::for_tests()
        };
        let spec = EndpointSpec {
            address: addr.to_string(),
            weight: 1,
        };
        Arc::new(Cluster::build("backend", settings, vec![spec]).unwrap())
    }

    fn health(host: Option<&str>) -> HealthCheckSettings {
        HealthCheckSettings {
            path: "/healthz".into(),
            host: host.map(str::to_owned),
            interval: Duration::from_millis(20),
            timeout: Duration::from_millis(300),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            expected_statuses: Vec::new(),
        }
    }

    /// Answers every request with `status` (changeable) and forwards each
    /// request head, with the status it gets, to the returned channel.
    async fn server() -> (SocketAddr, Arc<AtomicU16>, mpsc::UnboundedReceiver<(String, u16)>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let status = Arc::new(AtomicU16::new(200));
        let (requests, received) = mpsc::unbounded_channel();
        let answer = status.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let mut buffer = Vec::new();
                while !buffer.windows(4).any(|w| w == b"\r\n\r\n") {
                    if stream.read_buf(&mut buffer).await.unwrap_or(0) == 0 {
                        break;
                    }
                }
                let code = answer.load(Ordering::Relaxed);
                let _ = requests.send((String::from_utf8_lossy(&buffer).into_owned(), code));
                let response = format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                let _ = stream.write_all(response.as_bytes()).await;
            }
        });
        (addr, status, received)
    }

    async fn wait_for(what: &str, condition: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !condition() {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn marks_down_after_failures_and_up_after_successes() {
        let (addr, status, mut requests) = server().await;
        let mut settings = health(None);
        // Long enough that no further check completes between receiving a
        // request and asserting on the state it leads to.
        settings.interval = Duration::from_millis(100);
        let cluster = cluster(addr, Some(settings));
        let endpoint = cluster.endpoints().endpoints[0].clone();
        let task = spawn(cluster.clone()).expect("cluster has a health check");

        let (first, _) = requests.recv().await.unwrap();
        assert!(first.starts_with("GET /healthz HTTP/1.1\r\n"), "{first}");
        for header in [
            format!("Host: {addr}"),
            format!("User-Agent: {USER_AGENT}"),
            "Connection: close".into(),
        ] {
            assert!(first.contains(&format!("{header}\r\n")), "missing {header} in {first}");
        }
        assert!(endpoint.is_active_healthy());

        status.store(500, Ordering::Relaxed);
        let mut failures = 0;
        // The third failing request is on its way: two failures were processed.
        while failures < 3 {
            failures += usize::from(requests.recv().await.unwrap().1 == 500);
        }
        assert!(
            endpoint.is_active_healthy(),
            "still up after two failures (threshold 3)"
        );
        wait_for("the endpoint to be marked down", || !endpoint.is_active_healthy()).await;
        assert!(!endpoint.is_available());

        status.store(200, Ordering::Relaxed);
        wait_for("the endpoint to be marked up", || endpoint.is_active_healthy()).await;
        task.abort();
    }

    #[tokio::test]
    async fn unreachable_or_silent_endpoints_go_down() {
        // Nothing listens on a port just released.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let refused = cluster(closed, Some(health(None)));
        let _refused_task = spawn(refused.clone()).unwrap();

        // Accepts, reads, never answers: the timeout must fail the check.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_addr = silent.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = silent.accept().await {
                held.push(stream);
            }
        });
        let mut settings = health(Some("status.internal"));
        settings.timeout = Duration::from_millis(50);
        let silent_cluster = cluster(silent_addr, Some(settings));
        let _silent_task = spawn(silent_cluster.clone()).unwrap();

        let refused_endpoint = refused.endpoints().endpoints[0].clone();
        let silent_endpoint = silent_cluster.endpoints().endpoints[0].clone();
        wait_for("refused endpoint down", || !refused_endpoint.is_active_healthy()).await;
        wait_for("silent endpoint down", || !silent_endpoint.is_active_healthy()).await;
    }

    #[tokio::test]
    async fn expected_statuses_and_host_override() {
        let (addr, status, mut requests) = server().await;
        status.store(503, Ordering::Relaxed);
        let mut settings = health(Some("health.example"));
        settings.expected_statuses = vec![503];
        let cluster = cluster(addr, Some(settings));
        let endpoint = cluster.endpoints().endpoints[0].clone();
        endpoint.set_active_healthy(false);
        let _task = spawn(cluster.clone()).unwrap();
        let (first, _) = requests.recv().await.unwrap();
        assert!(first.contains("Host: health.example\r\n"), "{first}");
        wait_for("503 counts as healthy when expected", || endpoint.is_active_healthy()).await;
    }

    #[tokio::test]
    async fn no_settings_no_task_and_dropping_the_cluster_ends_it() {
        let (addr, _status, mut requests) = server().await;
        assert!(spawn(cluster(addr, None)).is_none());

        let cluster = cluster(addr, Some(health(None)));
        let task = spawn(cluster.clone()).unwrap();
        requests.recv().await.unwrap();
        drop(cluster);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("task ends with its cluster")
            .unwrap();
    }
}
