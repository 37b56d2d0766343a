//! End-to-end tests: the real proxy (in process, or the `weft` binary) between real
//! clients and servers on 127.0.0.1, every port chosen by the kernel.

mod support;

mod http;

mod ops_support;

mod admin;
mod cli;
mod lifecycle;
mod reload;
