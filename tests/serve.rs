//! `llamagen serve` as a user meets it: the binary on a loopback port with the bundled demo model. Served PNGs are
//! byte for byte the CLI's (`llamagen generate`, same seed and settings) while requests share the batch; bad
//! requests get 4xx naming the field; a full queue 503 with Retry-After; a client that leaves frees its rows;
//! SIGTERM finishes accepted requests, then the process exits 0.
mod support;

use base64::Engine;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_llamagen"))
            .args(["serve", "--port", "0"])
            .args(extra)
            .env_remove("LLAMAGEN_DEMO_DIR")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start llamagen serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the listening line");
        let url = line
            .trim()
            .strip_prefix("llamagen serve: listening on ")
            .unwrap_or_else(|| panic!("unexpected first line `{line}`"))
            .to_string();
        Server { child, url }
    }

    fn post(&self, body: &str) -> (u16, Value, Option<String>) {
        let r = ureq::post(&format!("{}/v1/images/generations", self.url))
            .set("content-type", "application/json")
            .send_string(body);
        let resp = match r {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("POST {body}: {e}"),
        };
        let status = resp.status();
        let retry = resp.header("retry-after").map(str::to_string);
        (status, resp.into_json().unwrap_or(Value::Null), retry)
    }

    fn get(&self, path: &str) -> (u16, String) {
        match ureq::get(&format!("{}{path}", self.url)).call() {
            Ok(r) => (r.status(), r.into_string().unwrap()),
            Err(ureq::Error::Status(c, r)) => (c, r.into_string().unwrap_or_default()),
            Err(e) => panic!("GET {path}: {e}"),
        }
    }

    /// A value of the metrics text (first line starting with `name`).
    fn metric(&self, name: &str) -> f64 {
        let (_, text) = self.get("/metrics");
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
    }

    fn wait_for(&self, what: &str, cond: impl Fn(&Server) -> bool) {
        let t = Instant::now();
        while !cond(self) {
            assert!(t.elapsed() < Duration::from_secs(20), "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pngs(v: &Value) -> Vec<(u64, Vec<u8>)> {
    v["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|d| {
            let b = base64::engine::general_purpose::STANDARD
                .decode(d["b64_json"].as_str().expect("b64_json"))
                .expect("base64");
            (d["index"].as_u64().expect("index"), b)
        })
        .collect()
}

fn cli(out: &Path, args: &[&str]) {
    let o = Command::new(env!("CARGO_BIN_EXE_llamagen"))
        .args(["generate", "--quiet", "--out"])
        .arg(out)
        .args(args)
        .env_remove("LLAMAGEN_DEMO_DIR")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn served_images_equal_the_cli_while_sharing_the_batch() {
    // 3 images in the batch: the requests below (11 images) queue, join mid-run and share steps.
    let s = Server::start(&["--max-batch", "3"]);
    let reqs = [
        (
            json!({"class": 7, "n": 4, "seed": 3}),
            vec!["--class", "7", "--num-images", "4", "--seed", "3"],
        ),
        (
            json!({"class_name": "Bag", "n": 3, "seed": 9, "first_index": 2, "cfg_scale": 1.0, "top_k": 50}),
            vec![
                "--class",
                "8",
                "--num-images",
                "5",
                "--seed",
                "9",
                "--cfg-scale",
                "1.0",
                "--top-k",
                "50",
            ],
        ),
        (
            json!({"class": 0, "n": 4, "seed": 1, "cfg_scale": 3.5, "top_p": 0.8, "temperature": 0.7}),
            vec![
                "--class",
                "0",
                "--num-images",
                "4",
                "--seed",
                "1",
                "--cfg-scale",
                "3.5",
                "--top-p",
                "0.8",
                "--temperature",
                "0.7",
            ],
        ),
    ];
    let served: Vec<Value> = std::thread::scope(|sc| {
        let hs: Vec<_> = reqs
            .iter()
            .enumerate()
            .map(|(k, (body, _))| {
                let s = &s;
                sc.spawn(move || {
                    std::thread::sleep(Duration::from_millis(15 * k as u64));
                    let (status, v, _) = s.post(&body.to_string());
                    assert_eq!(status, 200, "{body}: {v}");
                    v
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let tmp = support::cli::tmp();
    for (k, ((body, args), v)) in reqs.iter().zip(&served).enumerate() {
        let dir = tmp.path().join(format!("r{k}"));
        cli(&dir, args);
        let got = pngs(v);
        assert_eq!(got.len() as u64, body["n"].as_u64().unwrap());
        for (index, png) in got {
            let want = std::fs::read(dir.join(format!("{index:06}.png"))).unwrap();
            assert!(
                png == want,
                "request {k} ({body}): image {index} differs from the CLI's"
            );
        }
        assert!(v["created"].as_u64().unwrap() > 1_700_000_000);
    }
    assert_eq!(served[1]["data"][0]["class_name"], "Bag");
    assert_eq!(s.metric("llamagen_images_generated_total"), 11.0);
    assert_eq!(s.metric("llamagen_responses_total{code=\"200\"}"), 3.0);
}

#[test]
fn bad_requests_get_4xx_naming_the_culprit() {
    let s = Server::start(&[]);
    let cases: &[(&str, u16, &str)] = &[
        ("{\"class\": 1", 400, "malformed"),
        ("{\"class\": 1, \"size\": \"256x256\"}", 422, "unknown field `size`"),
        ("{\"class\": 1, \"n\": 100}", 422, "n = 100"),
        ("{\"class\": 12}", 422, "class 12"),
        ("{\"class\": 1, \"top_p\": 1.5}", 422, "top_p"),
        ("{\"class_name\": \"Hat\"}", 422, "Sneaker"),
    ];
    for &(body, status, word) in cases {
        let (got, v, _) = s.post(body);
        assert_eq!(got, status, "{body}: {v}");
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(word), "{body}: `{msg}` lacks `{word}`");
    }
    // A body over the limit is refused from its Content-Length, before it is read (a client streaming it would see
    // the connection close under it, so only the headers are sent).
    let addr = s.url.trim_start_matches("http://").to_string();
    let mut c = TcpStream::connect(&addr).unwrap();
    write!(
        c,
        "POST /v1/images/generations HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: 200000\r\n\r\n"
    )
    .unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = [0u8; 12];
    c.read_exact(&mut head).expect("an answer before the body");
    assert_eq!(&head, b"HTTP/1.1 413", "a body over the limit");
    assert_eq!(s.get("/v1/nothing").0, 404);
    assert_eq!(
        ureq::get(&format!("{}/v1/images/generations", s.url))
            .call()
            .err()
            .map(|e| match e {
                ureq::Error::Status(c, _) => c,
                _ => 0,
            }),
        Some(405)
    );
    // Still serving.
    let (status, v, _) = s.post("{\"class\": 2}");
    assert_eq!(status, 200, "{v}");
    let (status, page) = s.get("/");
    assert!(status == 200 && page.contains("<title>llamagen serve</title>"));
    let (_, models) = s.get("/v1/models");
    let m: Value = serde_json::from_str(&models).unwrap();
    assert_eq!(m["data"][0]["class_names"][7], "Sneaker");
    assert_eq!(m["data"][0]["defaults"]["cfg_scale"], 2.0);
}

#[test]
fn a_full_queue_answers_503_with_retry_after() {
    // One image at a time, one request waiting: the first request runs, the second waits, the third is refused.
    let s = Server::start(&["--max-batch", "1", "--max-queue", "1"]);
    std::thread::scope(|sc| {
        let long = sc.spawn(|| s.post("{\"class\": 1, \"n\": 12}"));
        s.wait_for("the long request to run", |s| s.metric("llamagen_running_rows") > 0.0);
        let waiting = sc.spawn(|| s.post("{\"class\": 2, \"n\": 2}"));
        s.wait_for("the second request to queue", |s| {
            s.metric("llamagen_queue_requests") == 1.0
        });
        let (status, v, retry) = s.post("{\"class\": 1, \"n\": 3}");
        assert_eq!(status, 503, "{v}");
        assert_eq!(retry.as_deref(), Some("1"));
        assert!(v["error"]["message"].as_str().unwrap().contains("queue is full"), "{v}");
        let (status, v, _) = long.join().unwrap();
        assert_eq!(status, 200, "{v}");
        assert_eq!(pngs(&v).len(), 12);
        let (status, v, _) = waiting.join().unwrap();
        assert_eq!(status, 200, "{v}");
        assert_eq!(pngs(&v).len(), 2);
    });
}

#[test]
fn a_client_that_leaves_frees_its_rows() {
    let s = Server::start(&["--max-batch", "4"]);
    let addr = s.url.trim_start_matches("http://").to_string();
    let body = "{\"class\": 3, \"n\": 64}";
    let mut c = TcpStream::connect(&addr).unwrap();
    write!(
        c,
        "POST /v1/images/generations HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    s.wait_for("the request to run", |s| s.metric("llamagen_running_rows") > 0.0);
    drop(c);
    s.wait_for("the abandoned request to be dropped", |s| {
        s.metric("llamagen_requests_abandoned_total") == 1.0
    });
    // Its 64 images never finish: the batch is free for the next request at once.
    let t = Instant::now();
    let (status, v, _) = s.post("{\"class\": 3, \"n\": 2}");
    assert_eq!(status, 200, "{v}");
    assert!(s.metric("llamagen_images_generated_total") < 64.0);
    assert!(t.elapsed() < Duration::from_secs(10));
}

#[test]
fn sigterm_finishes_accepted_requests_then_exits() {
    let mut s = Server::start(&["--max-batch", "2"]);
    let url = s.url.clone();
    let pid = s.child.id() as i32;
    let long = std::thread::spawn(move || {
        let r = ureq::post(&format!("{url}/v1/images/generations")).send_string("{\"class\": 5, \"n\": 24}");
        let v: Value = r.expect("the accepted request is answered").into_json().unwrap();
        v["data"].as_array().map(Vec::len)
    });
    s.wait_for("the request to run", |s| s.metric("llamagen_running_rows") > 0.0);
    // SAFETY: plain kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    assert_eq!(long.join().unwrap(), Some(24));
    let t = Instant::now();
    let status = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "still running after SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "exit status {status:?}");
    let mut refused = String::new();
    let addr = s.url.trim_start_matches("http://");
    if let Ok(mut c) = TcpStream::connect(addr) {
        let _ = c.read_to_string(&mut refused);
    }
    assert!(refused.is_empty(), "the stopped server still answered: {refused}");
}
