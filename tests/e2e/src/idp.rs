//! A stand-in identity provider's JWKS endpoint for the identity tests: a real HTTP
//! server on loopback whose document and status the test changes mid-run, counting
//! the fetches it answers.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;

struct State {
    status: u16,
    body: String,
    fetches: AtomicUsize,
}

/// A JWKS served over HTTP at `url`.
pub struct JwksServer {
    /// `http://127.0.0.1:<port>/jwks`
    pub url: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    /// Serves `body` with 200 until told otherwise.
    pub async fn start(body: String) -> JwksServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let url = format!("http://{}/jwks", listener.local_addr().expect("addr"));
        let state = Arc::new(Mutex::new(State {
            status: 200,
            body,
            fetches: AtomicUsize::new(0),
        }));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |_req: Request<hyper::body::Incoming>| {
                        let (status, body) = {
                            let s = state.lock();
                            s.fetches.fetch_add(1, Ordering::SeqCst);
                            (s.status, s.body.clone())
                        };
                        async move {
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .status(status)
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(body)))
                                    .unwrap_or_default(),
                            )
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        JwksServer { url, state, task }
    }

    /// Serves `body` from now on.
    pub fn set(&self, status: u16, body: String) {
        let mut s = self.state.lock();
        s.status = status;
        s.body = body;
    }

    /// How many requests it has answered.
    pub fn fetches(&self) -> usize {
        self.state.lock().fetches.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
