//! A scriptable stand-in of the Graph API messages endpoint: answers what a
//! test queues (any status, any body, after any delay) and records what it
//! was sent.

use std::collections::VecDeque;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};

#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    pub delay: Duration,
}

impl Answer {
    pub fn accepted(message_id: &str) -> Self {
        Self::json(
            200,
            &format!(
                r#"{{"messaging_product":"whatsapp","contacts":[{{"input":"x","wa_id":"x"}}],"messages":[{{"id":"{message_id}","message_status":"accepted"}}]}}"#
            ),
        )
    }

    pub fn json(status: u16, body: &str) -> Self {
        Self { status, body: body.to_owned(), delay: Duration::ZERO }
    }

    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub authorization: Option<String>,
    pub body: serde_json::Value,
    /// The body as sent (form fields for the SMS provider).
    pub text: String,
}

impl Received {
    /// A form field of the body.
    pub fn field(&self, name: &str) -> Option<String> {
        let fields: Vec<(String, String)> = serde_urlencoded::from_str(&self.text).ok()?;
        fields.into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }
}

#[derive(Default)]
struct State {
    answers: VecDeque<Answer>,
    received: Vec<Received>,
    counter: u64,
    /// Answers like the SMS provider rather than the Graph API.
    sms: bool,
}

#[derive(Clone)]
pub struct GraphStub {
    pub url: String,
    state: Arc<Mutex<State>>,
}

impl GraphStub {
    pub fn start() -> Self {
        Self::start_as(false)
    }

    /// A stand-in of the SMS provider's Messages API.
    pub fn start_sms() -> Self {
        Self::start_as(true)
    }

    fn start_as(sms: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State { sms, ..State::default() }));
        let shared = web::Data::from(state.clone());
        let server = HttpServer::new(move || {
            App::new().app_data(shared.clone()).default_service(web::to(answer))
        })
        .workers(1)
        .listen(listener)
        .unwrap()
        .run();
        actix_web::rt::spawn(server);
        Self { url, state }
    }

    /// The next request gets `answer`; with nothing queued, requests are
    /// accepted under a fresh message id.
    pub fn queue(&self, answer: Answer) {
        self.state.lock().unwrap().answers.push_back(answer);
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }
}

async fn answer(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<Mutex<State>>,
) -> HttpResponse {
    let answer = {
        let mut state = state.lock().unwrap();
        state.received.push(Received {
            path: req.path().to_owned(),
            authorization: req
                .headers()
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_owned()),
            body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
            text: String::from_utf8_lossy(&body).into_owned(),
        });
        state.counter += 1;
        let fallback = if state.sms {
            Answer::json(201, &format!(r#"{{"sid":"SMSTUB{}","status":"queued"}}"#, state.counter))
        } else {
            Answer::accepted(&format!("wamid.STUB{}", state.counter))
        };
        state.answers.pop_front().unwrap_or(fallback)
    };
    if !answer.delay.is_zero() {
        actix_web::rt::time::sleep(answer.delay).await;
    }
    HttpResponse::build(actix_web::http::StatusCode::from_u16(answer.status).unwrap())
        .content_type("application/json")
        .body(answer.body)
}
