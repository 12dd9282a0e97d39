//! The HTTP API (OpenAI-images-like JSON) over the scheduler's queue. Every request is parsed and range-checked
//! here; the scheduler only ever sees valid work.
use super::metrics::Metrics;
use super::scheduler::{ImageSpec, Job, Queue, Refused, Reply, Settings};
use crate::model::gpt_continuous::RowCondition;
use crate::sample::sampler::SamplingParams;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::Arc;

/// Most images one request may ask for.
pub const MAX_N: usize = 64;

/// What `GET /v1/models` describes and requests are checked against.
#[derive(Clone, Debug, Serialize)]
pub struct ModelInfo {
    pub id: String,
    pub model_type: &'static str,
    pub num_classes: usize,
    pub class_names: Option<Vec<String>>,
    pub image_size: usize,
    pub tokens_per_image: usize,
    pub vocab_size: usize,
    /// t2i: condition positions and caption feature size.
    pub cls_token_num: usize,
    pub caption_dim: usize,
    pub max_batch: usize,
    pub max_queue: usize,
    pub max_n: usize,
    pub defaults: Defaults,
    pub device: String,
    pub dtype: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Defaults {
    pub cfg_scale: f32,
    pub cfg_interval: i64,
    pub top_k: usize,
    pub top_p: f32,
    pub temperature: f32,
}

#[derive(Clone)]
pub struct AppState {
    pub queue: Arc<Queue>,
    pub metrics: Arc<Metrics>,
    pub model: Arc<ModelInfo>,
    /// Largest request body in bytes.
    pub body_limit: usize,
}

/// The body of `POST /v1/images/generations`. Unknown fields are refused, naming them.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct GenerationRequest {
    model: Option<String>,
    class: Option<i64>,
    class_name: Option<String>,
    n: Option<i64>,
    seed: Option<u64>,
    /// Image j of the request is image `first_index + j` of the seed's run (the CLI's `--num-images` order), so a
    /// client can fetch a run's images in pieces.
    first_index: Option<u64>,
    cfg_scale: Option<f64>,
    cfg_interval: Option<i64>,
    top_k: Option<i64>,
    top_p: Option<f64>,
    temperature: Option<f64>,
    response_format: Option<String>,
    /// t2i: base64 `.npy` float `[T, caption_dim]` (or `[1, T, caption_dim]`) and its optional mask `[T]`.
    caption_embs: Option<String>,
    caption_mask: Option<String>,
}

/// A refusal: status, message (naming the culprit), and the field it is about.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    param: Option<&'static str>,
    retry_after: Option<u32>,
}

fn unprocessable(param: &'static str, message: impl Into<String>) -> ApiError {
    ApiError {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        message: message.into(),
        param: Some(param),
        retry_after: None,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = match self.status.as_u16() {
            503 => "overloaded",
            500 => "server_error",
            _ => "invalid_request_error",
        };
        let body = json!({"error": {"message": self.message, "type": kind, "param": self.param}});
        let mut r = (self.status, Json(body)).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(models))
        .route("/v1/images/generations", post(generations))
        // The generations handler enforces the state's limit itself (from Content-Length before reading a byte).
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}

async fn health(State(s): State<AppState>) -> Response {
    if s.queue.is_closed() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "shutting down"})),
        )
            .into_response();
    }
    Json(json!({"status": "ok", "queue_requests": s.queue.waiting()})).into_response()
}

async fn metrics(State(s): State<AppState>) -> Response {
    let mut text = s.metrics.render();
    text.push_str(&format!(
        "# HELP llamagen_max_batch Images the batch holds.\n# TYPE llamagen_max_batch gauge\nllamagen_max_batch {}\n",
        s.model.max_batch
    ));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn models(State(s): State<AppState>) -> Json<serde_json::Value> {
    let mut m = serde_json::to_value(&*s.model).unwrap_or_default();
    if let Some(o) = m.as_object_mut() {
        o.insert("object".into(), "model".into());
        o.insert("owned_by".into(), "llamagen-rs".into());
    }
    Json(json!({"object": "list", "data": [m]}))
}

async fn generations(State(s): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let r = match read_body(&headers, body, s.body_limit).await {
        Ok(bytes) => generate(&s, &bytes).await,
        Err(e) => Err(e),
    };
    let status = match &r {
        Ok(_) => 200,
        Err(e) => e.status.as_u16(),
    };
    s.metrics.add_response(status);
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn generate(s: &AppState, body: &[u8]) -> Result<serde_json::Value, ApiError> {
    let req = parse(body)?;
    let (settings, images) = validate(&req, &s.model)?;
    let (tx, rx) = tokio::sync::oneshot::channel::<Reply>();
    let n = images.len();
    let classes: Vec<Option<usize>> = images
        .iter()
        .map(|i| match i.cond {
            RowCondition::Class(c) => Some(c),
            _ => None,
        })
        .collect();
    let job = Job {
        settings: settings.clone(),
        images,
        reply: tx,
    };
    if let Err((why, _)) = s.queue.submit(job) {
        let (message, retry) = match why {
            Refused::Full => (
                format!(
                    "the queue is full ({} requests waiting, --max-queue {}): retry later",
                    s.queue.waiting(),
                    s.model.max_queue
                ),
                Some(1),
            ),
            Refused::Closed => ("the server is shutting down".to_string(), None),
        };
        return Err(ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message,
            param: None,
            retry_after: retry,
        });
    }
    let images = match rx.await {
        Ok(Ok(images)) => images,
        Ok(Err(msg)) => return Err(server_error(msg)),
        Err(_) => return Err(server_error("the scheduler stopped before answering".into())),
    };
    if images.len() != n {
        return Err(server_error(format!("{} of {n} images came back", images.len())));
    }
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let b64 = base64::engine::general_purpose::STANDARD;
    let data: Vec<serde_json::Value> = images
        .iter()
        .zip(classes)
        .map(|(img, class)| {
            let mut o = json!({"b64_json": b64.encode(&img.png), "seed": settings.seed, "index": img.index});
            if let Some(c) = class {
                o["class"] = c.into();
                if let Some(name) = s.model.class_names.as_ref().and_then(|n| n.get(c)) {
                    o["class_name"] = name.clone().into();
                }
            }
            o
        })
        .collect();
    Ok(json!({"created": created, "data": data}))
}

/// The body, refused with 413 when its Content-Length (or, without one, what arrives) is over `limit`.
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = |n: String| ApiError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        message: format!("the request body ({n}) is over the limit of {limit} bytes"),
        param: None,
        retry_after: None,
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared.filter(|&n| n > limit as u64) {
        return Err(too_large(format!("{n} bytes")));
    }
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large("more bytes".into()))
}

fn server_error(message: String) -> ApiError {
    ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        message,
        param: None,
        retry_after: None,
    }
}

/// Malformed JSON is a 400; well-formed JSON with a wrong field (unknown, wrong type) a 422 naming the field.
fn parse(body: &[u8]) -> Result<GenerationRequest, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    match serde_path_to_error::deserialize::<_, GenerationRequest>(de) {
        Ok(r) => Ok(r),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if inner.is_data() {
                let at = if path == "." {
                    String::new()
                } else {
                    format!("field `{path}`: ")
                };
                Err(ApiError {
                    status: StatusCode::UNPROCESSABLE_ENTITY,
                    message: format!("{at}{inner}"),
                    param: None,
                    retry_after: None,
                })
            } else {
                Err(ApiError {
                    status: StatusCode::BAD_REQUEST,
                    message: format!("malformed JSON body: {inner}"),
                    param: None,
                    retry_after: None,
                })
            }
        }
    }
}

fn validate(r: &GenerationRequest, m: &ModelInfo) -> Result<(Settings, Vec<ImageSpec>), ApiError> {
    if let Some(model) = &r.model {
        if model != &m.id {
            return Err(unprocessable(
                "model",
                format!("model `{model}` is not served here (this server runs `{}`)", m.id),
            ));
        }
    }
    if let Some(f) = &r.response_format {
        if f != "b64_json" {
            return Err(unprocessable(
                "response_format",
                format!("response_format `{f}`: only b64_json is supported"),
            ));
        }
    }
    let n = r.n.unwrap_or(1);
    if n < 1 || n > MAX_N as i64 {
        return Err(unprocessable("n", format!("n = {n} is outside 1..={MAX_N}")));
    }
    let n = n as usize;
    let first = r.first_index.unwrap_or(0);
    if first.checked_add(n as u64).is_none_or(|e| e > i32::MAX as u64) {
        return Err(unprocessable(
            "first_index",
            format!("first_index {first} + n is too large"),
        ));
    }
    let d = &m.defaults;
    let cfg_scale = r.cfg_scale.unwrap_or(d.cfg_scale as f64);
    if !(cfg_scale.is_finite() && (0.0..=1000.0).contains(&cfg_scale)) {
        return Err(unprocessable(
            "cfg_scale",
            format!("cfg_scale {cfg_scale} must be in 0..=1000"),
        ));
    }
    let cfg_interval = r.cfg_interval.unwrap_or(d.cfg_interval);
    if cfg_interval < -1 {
        return Err(unprocessable(
            "cfg_interval",
            format!("cfg_interval {cfg_interval} must be >= -1"),
        ));
    }
    let top_k = r.top_k.unwrap_or(d.top_k as i64);
    if top_k < 0 || top_k as usize > m.vocab_size {
        return Err(unprocessable(
            "top_k",
            format!("top_k {top_k} is outside 0..={} (0 = all)", m.vocab_size),
        ));
    }
    let top_p = r.top_p.unwrap_or(d.top_p as f64);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(unprocessable("top_p", format!("top_p {top_p} is outside (0, 1]")));
    }
    let temperature = r.temperature.unwrap_or(d.temperature as f64);
    if !(temperature.is_finite() && (0.0..=100.0).contains(&temperature)) {
        return Err(unprocessable(
            "temperature",
            format!("temperature {temperature} must be in 0..=100"),
        ));
    }
    let settings = Settings {
        cfg_scale: cfg_scale as f32,
        cfg_interval,
        sampling: SamplingParams {
            temperature: temperature as f32,
            top_k: top_k as usize,
            top_p: top_p as f32,
        },
        seed: r.seed.unwrap_or(0),
    };
    let cond = condition(r, m)?;
    let images = (0..n as u64)
        .map(|j| ImageSpec {
            index: first + j,
            cond: cond.clone(),
        })
        .collect();
    Ok((settings, images))
}

fn condition(r: &GenerationRequest, m: &ModelInfo) -> Result<RowCondition, ApiError> {
    if m.model_type == "t2i" {
        if r.class.is_some() || r.class_name.is_some() {
            return Err(unprocessable(
                "class",
                "this model is text-conditional: send caption_embs",
            ));
        }
        return caption(r, m);
    }
    if r.caption_embs.is_some() || r.caption_mask.is_some() {
        return Err(unprocessable(
            "caption_embs",
            "this model is class-conditional: send class or class_name",
        ));
    }
    match (r.class, &r.class_name) {
        (Some(_), Some(_)) => Err(unprocessable("class", "give class or class_name, not both")),
        (None, None) => Err(unprocessable("class", "class (an id) or class_name is required")),
        (Some(c), None) => {
            if c < 0 || c as usize >= m.num_classes {
                return Err(unprocessable(
                    "class",
                    format!("class {c} is outside 0..{}", m.num_classes),
                ));
            }
            Ok(RowCondition::Class(c as usize))
        }
        (None, Some(name)) => {
            let names = m.class_names.as_deref().unwrap_or_default();
            match names.iter().position(|x| x.eq_ignore_ascii_case(name)) {
                Some(c) => Ok(RowCondition::Class(c)),
                None if names.is_empty() => {
                    Err(unprocessable("class_name", "this model has no class names: send class"))
                }
                None => Err(unprocessable(
                    "class_name",
                    format!("class_name `{name}` is not one of: {}", names.join(", ")),
                )),
            }
        }
    }
}

fn caption(r: &GenerationRequest, m: &ModelInfo) -> Result<RowCondition, ApiError> {
    let (t, cd) = (m.cls_token_num, m.caption_dim);
    let npy = |field: &'static str, b64: &str| -> Result<crate::io::npy::NpyArray, ApiError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|e| unprocessable(field, format!("{field}: not base64: {e}")))?;
        crate::io::npy::parse_npy(&bytes, std::path::Path::new(field)).map_err(|e| unprocessable(field, e.to_string()))
    };
    let Some(e) = &r.caption_embs else {
        return Err(unprocessable(
            "caption_embs",
            "caption_embs (a base64 .npy of T5 features) is required",
        ));
    };
    let e = npy("caption_embs", e)?;
    if !(e.shape == [t, cd] || e.shape == [1, t, cd]) {
        return Err(unprocessable(
            "caption_embs",
            format!("caption_embs shape {:?}, expected [{t}, {cd}]", e.shape),
        ));
    }
    let embs = e
        .to_f32()
        .ok_or_else(|| unprocessable("caption_embs", "caption_embs is not a float array"))?;
    if embs.iter().any(|v| !v.is_finite()) {
        return Err(unprocessable("caption_embs", "caption_embs holds a non-finite value"));
    }
    let mask = match &r.caption_mask {
        None => vec![1.0; t],
        Some(b) => {
            let a = npy("caption_mask", b)?;
            if !(a.shape == [t] || a.shape == [1, t]) {
                return Err(unprocessable(
                    "caption_mask",
                    format!("caption_mask shape {:?}, expected [{t}]", a.shape),
                ));
            }
            let v = a
                .to_f32()
                .ok_or_else(|| unprocessable("caption_mask", "caption_mask is not numeric"))?;
            if v.iter().any(|&x| x != 0.0 && x != 1.0) {
                return Err(unprocessable("caption_mask", "caption_mask values must be 0 or 1"));
            }
            v
        }
    };
    Ok(RowCondition::Caption { embs: Some(embs), mask })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> ModelInfo {
        ModelInfo {
            id: "demo".into(),
            model_type: "c2i",
            num_classes: 10,
            class_names: Some(vec!["T-shirt/top".into(), "Sneaker".into()]),
            image_size: 28,
            tokens_per_image: 49,
            vocab_size: 512,
            cls_token_num: 1,
            caption_dim: 0,
            max_batch: 8,
            max_queue: 16,
            max_n: MAX_N,
            defaults: Defaults {
                cfg_scale: 2.0,
                cfg_interval: -1,
                top_k: 0,
                top_p: 1.0,
                temperature: 1.0,
            },
            device: "cpu".into(),
            dtype: "f32".into(),
        }
    }

    fn check(body: &str) -> Result<(Settings, Vec<ImageSpec>), ApiError> {
        validate(&parse(body.as_bytes())?, &model())
    }

    /// Each bad body, the status it must get, and a word its message must hold.
    #[test]
    fn bad_requests_are_refused_naming_the_field() {
        let cases: &[(&str, u16, &str)] = &[
            ("{\"class\": 1", 400, "malformed"),
            ("not json", 400, "malformed"),
            ("{\"class\": 1, \"colour\": 3}", 422, "colour"),
            ("{\"class\": \"one\"}", 422, "class"),
            ("{\"class\": 1, \"n\": 0}", 422, "n = 0"),
            ("{\"class\": 1, \"n\": 65}", 422, "n = 65"),
            ("{\"class\": 10}", 422, "class 10"),
            ("{\"class\": -1}", 422, "class -1"),
            ("{}", 422, "required"),
            ("{\"class\": 1, \"class_name\": \"Sneaker\"}", 422, "not both"),
            ("{\"class_name\": \"Boot\"}", 422, "Boot"),
            ("{\"class\": 1, \"top_p\": 0}", 422, "top_p"),
            ("{\"class\": 1, \"top_k\": -2}", 422, "top_k"),
            ("{\"class\": 1, \"top_k\": 513}", 422, "top_k"),
            ("{\"class\": 1, \"temperature\": -1}", 422, "temperature"),
            ("{\"class\": 1, \"cfg_scale\": 1e309}", 400, "malformed"),
            ("{\"class\": 1, \"cfg_scale\": -0.5}", 422, "cfg_scale"),
            ("{\"class\": 1, \"seed\": -1}", 422, "seed"),
            ("{\"class\": 1, \"response_format\": \"url\"}", 422, "b64_json"),
            ("{\"class\": 1, \"model\": \"GPT-XXL\"}", 422, "GPT-XXL"),
            ("{\"class\": 1, \"caption_embs\": \"AAAA\"}", 422, "class-conditional"),
            ("{\"class\": 1, \"first_index\": 4294967295}", 422, "first_index"),
        ];
        for &(body, status, word) in cases {
            match check(body) {
                Ok(_) => panic!("{body}: accepted"),
                Err(e) => {
                    assert_eq!(e.status.as_u16(), status, "{body}: {}", e.message);
                    assert!(
                        e.message.contains(word),
                        "{body}: message `{}` lacks `{word}`",
                        e.message
                    );
                }
            }
        }
    }

    #[test]
    fn t2i_requests_carry_caption_features() {
        let m = ModelInfo {
            model_type: "t2i",
            num_classes: 0,
            class_names: None,
            cls_token_num: 3,
            caption_dim: 2,
            ..model()
        };
        let b64 = |bytes: Vec<u8>| base64::engine::general_purpose::STANDARD.encode(bytes);
        let embs = b64(crate::io::npy::npy_bytes_f32(&[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
        let mask = b64(crate::io::npy::npy_bytes_f32(&[3], &[0.0, 1.0, 1.0]));
        let body = format!("{{\"caption_embs\": \"{embs}\", \"caption_mask\": \"{mask}\", \"n\": 2}}");
        let (_, imgs) = validate(&parse(body.as_bytes()).unwrap(), &m).unwrap();
        let want = RowCondition::Caption {
            embs: Some(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
            mask: vec![0.0, 1.0, 1.0],
        };
        assert!(imgs.len() == 2 && imgs.iter().all(|i| i.cond == want));
        // Without a mask every position is valid.
        let body = format!("{{\"caption_embs\": \"{embs}\"}}");
        let (_, imgs) = validate(&parse(body.as_bytes()).unwrap(), &m).unwrap();
        assert!(matches!(&imgs[0].cond, RowCondition::Caption { mask, .. } if mask == &vec![1.0; 3]));
        let wrong = b64(crate::io::npy::npy_bytes_f32(&[2, 3], &[0.0; 6]));
        let cases = [
            format!("{{\"caption_embs\": \"{wrong}\"}}"),
            "{\"caption_embs\": \"not base64!\"}".to_string(),
            "{\"class\": 3}".to_string(),
            "{}".to_string(),
            format!("{{\"caption_embs\": \"{embs}\", \"caption_mask\": \"{embs}\"}}"),
        ];
        for body in cases {
            let e = validate(&parse(body.as_bytes()).unwrap(), &m)
                .err()
                .unwrap_or_else(|| panic!("{body}: accepted"));
            assert_eq!(e.status.as_u16(), 422, "{body}: {}", e.message);
        }
    }

    #[test]
    fn good_requests_fill_defaults_and_indices() {
        let (s, imgs) = check("{\"class_name\": \"sneaker\", \"n\": 3, \"seed\": 7, \"first_index\": 5}").unwrap();
        assert_eq!(s.cfg_scale, 2.0);
        assert_eq!(s.seed, 7);
        assert_eq!(s.sampling.top_k, 0);
        assert_eq!(imgs.iter().map(|i| i.index).collect::<Vec<_>>(), vec![5, 6, 7]);
        assert!(imgs.iter().all(|i| i.cond == RowCondition::Class(1)));
        let (s, imgs) = check("{\"class\": 9, \"top_k\": 5, \"top_p\": 0.5, \"temperature\": 0}").unwrap();
        assert_eq!(
            (s.sampling.top_k, s.sampling.top_p, s.sampling.temperature),
            (5, 0.5, 0.0)
        );
        assert_eq!(imgs.len(), 1);
    }
}
