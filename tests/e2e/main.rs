//! End-to-end tests: the real proxy (in process, or the `weft` binary) between real
//! clients and servers on 127.0.0.1, every port chosen by the kernel.

mod ops_support;
mod support;

mod admin;
mod balance;
mod cli;
mod examples;
mod filters;
mod grpc;
mod health;
mod http;
mod lifecycle;
mod limits;
mod proxy_protocol;
mod reload;
mod timeouts;
mod tls;
mod tunnel;
mod upstream;
mod websocket;
