//! Integration tests: one binary, the real application on port 0 with a
//! temporary store, talking HTTP to a stand-in of the Graph API.

mod abuse;
mod api_errors;
mod check_code;
mod corpus;
mod durability;
mod fixtures;
mod graph_stub;
mod helpers;
mod logs;
mod retention;
mod robustness;
mod sandbox;
mod send_code;
mod shared_store;
mod sms;
mod webhook;
