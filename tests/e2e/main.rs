//! End-to-end tests: the real proxy (in process, or the `weft` binary) between real
//! clients and servers on 127.0.0.1, every port chosen by the kernel.

mod support;

mod balance;
mod examples;
mod filters;
mod grpc;
mod health;
mod http;
mod limits;
mod timeouts;
mod tls;
mod tunnel;
mod websocket;
