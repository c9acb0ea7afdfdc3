//! The status page at the admin port's `/`, rendered by a real headless Chromium (Debian's
//! `chromium`, installed by scripts/test.sh): backends with breaker states, tenants with ops/s,
//! and a chart of ops/s and p99 that has points. The screenshot is saved as
//! `target/status-page.png`.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{as_tenant, http_get, Keygate, Redis};

const TENANTS: &str = "[[tenants]]\nname = \"acme\"\npassword = \"acme-pw\"\nprefix = \"acme:\"\n\
    [[tenants]]\nname = \"globex\"\npassword = \"globex-pw\"\nprefix = \"globex:\"\n";

/// Run headless Chromium on `url` with `what` (`--dump-dom` or `--screenshot=...`).
fn chromium(url: &str, what: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1000,1100",
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(what)
        .arg(url)
        .output()
        .expect("chromium is missing: install Debian's chromium (scripts/test.sh does)");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_renders_in_chromium() {
    let backend = Redis::start();
    let kg = Keygate::start_with(&backend.addr(), TENANTS).await;
    // Traffic from two tenants for a few seconds, so there are samples to chart.
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for tenant in ["acme", "globex"] {
        let mut raw = as_tenant(&kg, tenant).await;
        let stop = stop.clone();
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                raw.call(&[b"SET", b"k", b"v"]).await;
                raw.call(&[b"GET", b"k"]).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let (status, json) = http_get(kg.admin, "/status.json").await;
    assert_eq!(status, 200);
    assert!(json.contains("\"samples\":[{"), "{json}");
    let url = format!("http://{}/", kg.admin);
    let dom = tokio::task::spawn_blocking({
        let url = url.clone();
        move || chromium(&url, "--dump-dom")
    })
    .await
    .unwrap();
    for expected in [
        &backend.addr()[..],
        "<td class=\"closed\">closed</td>",
        "<td>acme</td>",
        "<td>globex</td>",
        "ops/s",
    ] {
        assert!(
            dom.contains(expected),
            "{expected:?} missing from the rendered page:\n{dom}"
        );
    }
    // Each tenant's p99 over the last second, in its row.
    let tenants_table = dom.split("id=\"tenants\"").nth(1).unwrap_or_default();
    let tenants_table = tenants_table.split("</table>").next().unwrap_or_default();
    assert!(tenants_table.contains("p99 ms"), "{tenants_table}");
    assert_eq!(
        tenants_table.matches(">≤ ").count(),
        2,
        "a p99 per tenant: {tenants_table}"
    );
    // The chart has a line: points were drawn from the samples.
    let points = dom
        .split("id=\"ops\"")
        .nth(1)
        .and_then(|rest| rest.split("points=\"").nth(1))
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_default();
    assert!(points.split(' ').count() >= 2, "no chart line: {points:?}");
    let shot = concat!(env!("CARGO_MANIFEST_DIR"), "/target/status-page.png");
    let _ = std::fs::remove_file(shot);
    tokio::task::spawn_blocking(move || chromium(&url, &format!("--screenshot={shot}")))
        .await
        .unwrap();
    let size = std::fs::metadata(shot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 10_000, "screenshot missing or empty ({size} bytes)");
    println!("status page screenshot: {shot} ({size} bytes)");
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
}
