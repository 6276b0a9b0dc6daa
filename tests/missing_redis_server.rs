//! The test harness names the missing binary and how to install it. Alone
//! in its own test binary because it changes the process environment.

mod support;

#[test]
fn a_missing_redis_server_fails_with_install_advice() {
    std::env::set_var("REDIS_SERVER", "/nonexistent/redis-server-for-this-test");
    let outcome = std::panic::catch_unwind(support::RedisServer::start);
    std::env::remove_var("REDIS_SERVER");
    let panic = outcome.err().expect("starting a missing binary must fail");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("redis-server"), "{message}");
    assert!(
        message.contains("apt-get install redis-server"),
        "{message}"
    );
    assert!(message.contains("REDIS_SERVER"), "{message}");
}
