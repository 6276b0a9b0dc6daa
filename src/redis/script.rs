//! Lua scripts and the EVALSHA-first runner.

use std::fmt;
use std::sync::OnceLock;

use ::redis::{Cmd, FromRedisValue, Pipeline, ServerErrorKind, ToRedisArgs, Value};

use super::RedisBackend;
use crate::error::Error;

/// A [`Script`] from `.lua` files beside the calling module (helpers first,
/// the script last), with the crate's Lua prelude (`src/lua/prelude.lua`:
/// `now_ms()` from `TIME`) prepended at compile time. (Unused when every layer feature is off.)
#[allow(unused_macros)]
macro_rules! script {
    ($name:literal, $($file:literal),+) => {
        $crate::redis::Script::new(
            $name,
            concat!(
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/lua/prelude.lua")),
                $(include_str!($file)),+
            ),
        )
    };
}
#[allow(unused_imports)]
pub(crate) use script;

/// A Lua script, kept as a `.lua` file beside the Rust that calls it.
///
/// Declare scripts as statics; the SHA-1 is computed once, on first use:
///
/// ```
/// use redis_layers::redis::Script;
///
/// static INCR_TO: Script = Script::new(
///     "incr-to",
///     "-- KEYS[1]: counter; ARGV[1]: ceiling. Returns the new value or -1.\n\
///      local v = redis.call('INCR', KEYS[1])\n\
///      if v > tonumber(ARGV[1]) then redis.call('DECR', KEYS[1]) return -1 end\n\
///      return v",
/// );
/// assert_eq!(INCR_TO.name(), "incr-to");
/// assert_eq!(INCR_TO.sha1().len(), 40);
/// ```
///
/// A call sends `EVALSHA`; only when Redis answers `NOSCRIPT` (after a
/// `SCRIPT FLUSH`, a restart or a failover to a replica that never saw the
/// script) does it send `EVAL` with the body, which also caches the script
/// again. So the steady state is one round trip per call and no `SCRIPT LOAD`
/// is ever sent.
pub struct Script {
    name: &'static str,
    body: &'static str,
    sha1: OnceLock<String>,
}

impl Script {
    /// A script named `name` (used in errors and logs) with the Lua `body`.
    pub const fn new(name: &'static str, body: &'static str) -> Self {
        Script {
            name,
            body,
            sha1: OnceLock::new(),
        }
    }

    /// The name given at construction.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The Lua source.
    pub fn body(&self) -> &'static str {
        self.body
    }

    /// The hex SHA-1 of the body, as Redis names cached scripts.
    pub fn sha1(&self) -> &str {
        self.sha1
            .get_or_init(|| ::redis::Script::new(self.body).get_hash().to_owned())
    }
}

impl fmt::Debug for Script {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Script")
            .field("name", &self.name)
            .field("sha1", &self.sha1())
            .finish()
    }
}

/// Arguments written one after the other into one buffer (no allocation
/// per argument): what a script call collects until it knows how many keys
/// come before the arguments.
struct Args {
    data: Vec<u8>,
    ends: Vec<usize>,
}

impl Args {
    /// Room for `count` arguments of `bytes` in all, so that a typical call
    /// never grows its buffers.
    fn with_capacity(count: usize, bytes: usize) -> Self {
        Args {
            data: Vec::with_capacity(bytes),
            ends: Vec::with_capacity(count),
        }
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(self.ends.iter()).map(|(a, b)| &self.data[a..*b])
    }
}

impl ::redis::RedisWrite for Args {
    fn write_arg(&mut self, arg: &[u8]) {
        self.data.extend_from_slice(arg);
        self.ends.push(self.data.len());
    }

    fn writer_for_next_arg(&mut self) -> impl std::io::Write + '_ {
        ArgWriter(self)
    }
}

/// Writes one argument; it ends when the writer is dropped.
struct ArgWriter<'a>(&'a mut Args);

impl std::io::Write for ArgWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.data.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for ArgWriter<'_> {
    fn drop(&mut self) {
        self.0.ends.push(self.0.data.len());
    }
}

/// One call of a [`Script`]: its keys and arguments, built with
/// [`key`](ScriptCall::key) and [`arg`](ScriptCall::arg), sent with
/// [`invoke`](ScriptCall::invoke). Made by [`RedisBackend::script`].
#[must_use = "a script call does nothing until invoked"]
pub struct ScriptCall<'a> {
    backend: &'a RedisBackend,
    script: &'a Script,
    keys: Args,
    args: Args,
    finish_if_late: bool,
}

impl fmt::Debug for ScriptCall<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScriptCall")
            .field("script", &self.script.name)
            .field("keys", &self.keys.len())
            .field("args", &self.args.len())
            .finish()
    }
}

impl<'a> ScriptCall<'a> {
    pub(super) fn new(backend: &'a RedisBackend, script: &'a Script) -> Self {
        ScriptCall {
            backend,
            script,
            keys: Args::with_capacity(2, 128),
            args: Args::with_capacity(16, 256),
            finish_if_late: false,
        }
    }

    /// Appends to `KEYS`.
    pub fn key(mut self, key: impl ToRedisArgs) -> Self {
        key.write_redis_args(&mut self.keys);
        self
    }

    /// Appends to `ARGV`.
    pub fn arg(mut self, arg: impl ToRedisArgs) -> Self {
        arg.write_redis_args(&mut self.args);
        self
    }

    /// When the deadline passes, the caller still gets its timeout error,
    /// but the call goes on in the background (for up to 30 s) instead of
    /// being abandoned: an `EVALSHA` answered `NOSCRIPT` late (Redis was
    /// slow, then lost its script cache) is still followed by `EVAL`, and a
    /// call not yet written is still sent. For calls whose late effect is
    /// wanted and safe to repeat (recording an idempotent request's
    /// outcome); off by default, since a late, out-of-order run of a rate
    /// check or a session save would do harm.
    pub fn finish_if_late(mut self) -> Self {
        self.finish_if_late = true;
        self
    }

    fn command(&self, verb: &str, head: &str) -> Cmd {
        command(verb, head, &self.keys, &self.args)
    }

    /// Runs the script and then `next` in one pipeline (one round trip),
    /// within the backend's deadline, and decodes both replies. On NOSCRIPT
    /// the pipeline is sent again with EVAL, so `next` runs twice then: it
    /// must be a read. `next` runs right after the script but not atomically
    /// with it: another client's command may come between the two. On a
    /// Redis Cluster `next`'s key must share the script's slot (one
    /// pipeline goes to one node).
    ///
    /// Like [`invoke`](Self::invoke), [`finish_if_late`](Self::finish_if_late)
    /// applies.
    pub async fn invoke_then<T: FromRedisValue, U: FromRedisValue>(
        self,
        next: &Cmd,
    ) -> Result<(T, U), Error> {
        fn pipeline(first: Cmd, next: &Cmd) -> Pipeline {
            let mut pipe = ::redis::pipe();
            pipe.add_command(first).add_command(next.clone());
            pipe
        }
        let name = self.script.name;
        let body = self.script.body;
        let backend = self.backend.clone();
        let evalsha = pipeline(self.command("EVALSHA", self.script.sha1()), next);
        let next = next.clone();
        let (keys, args, detach) = (self.keys, self.args, self.finish_if_late);
        let work = move |mut c: super::conn::Checkout| async move {
            let mut replies = c
                .conn
                .send_packed_commands(&evalsha, 0, 2)
                .await
                .map_err(|e| c.fail(&backend, e, Some(name)))?;
            if matches!(replies.first(), Some(Value::ServerError(e))
                    if e.kind() == Some(ServerErrorKind::NoScript))
            {
                tracing::debug!(script = name, "NOSCRIPT: sending the body with EVAL");
                let eval = pipeline(command("EVAL", body, &keys, &args), &next);
                replies = c
                    .conn
                    .send_packed_commands(&eval, 0, 2)
                    .await
                    .map_err(|e| c.fail(&backend, e, Some(name)))?;
            }
            let mut replies = replies.into_iter();
            let (Some(first), Some(second)) = (replies.next(), replies.next()) else {
                return Err(Error::decode(format!(
                    "script {name}: short pipeline reply"
                )));
            };
            let first = first
                .extract_error()
                .map_err(|e| c.fail(&backend, e, Some(name)))?;
            let second = second
                .extract_error()
                .map_err(|e| c.fail(&backend, e, None))?;
            Ok((first, second))
        };
        let (first, second) = if detach {
            self.backend.call_detachable(work).await?
        } else {
            self.backend.call(work).await?
        };
        Ok((
            decode(first, || format!("script {name}"))?,
            decode(second, || format!("the command after script {name}"))?,
        ))
    }

    /// Runs the script (EVALSHA, then EVAL on NOSCRIPT) within the backend's
    /// deadline and decodes the reply as `T`. A timed-out call may still
    /// run once, if it was sent; with
    /// [`finish_if_late`](Self::finish_if_late) it is finished in the
    /// background. It is never sent twice by this method.
    pub async fn invoke<T: FromRedisValue>(self) -> Result<T, Error> {
        let name = self.script.name;
        let body = self.script.body;
        let backend = self.backend.clone();
        let evalsha = self.command("EVALSHA", self.script.sha1());
        let (keys, args, detach) = (self.keys, self.args, self.finish_if_late);
        let work = move |mut c: super::conn::Checkout| async move {
            match c.roundtrip(&evalsha).await {
                Err(e) if e.kind() == ::redis::ErrorKind::Server(ServerErrorKind::NoScript) => {
                    tracing::debug!(script = name, "NOSCRIPT: sending the body with EVAL");
                    let eval = command("EVAL", body, &keys, &args);
                    c.roundtrip(&eval)
                        .await
                        .map_err(|e| c.fail(&backend, e, Some(name)))
                }
                Ok(value) => Ok(value),
                Err(e) => Err(c.fail(&backend, e, Some(name))),
            }
        };
        let value = if detach {
            self.backend.call_detachable(work).await?
        } else {
            self.backend.call(work).await?
        };
        decode(value, || format!("script {name}"))
    }
}

/// `verb head numkeys keys… args…`.
fn command(verb: &str, head: &str, keys: &Args, args: &Args) -> Cmd {
    let mut cmd = Cmd::with_capacity(
        3 + keys.len() + args.len(),
        verb.len() + head.len() + 4 + keys.data.len() + args.data.len(),
    );
    cmd.arg(verb).arg(head).arg(keys.len());
    for k in keys.iter() {
        cmd.arg(k);
    }
    for a in args.iter() {
        cmd.arg(a);
    }
    cmd
}

/// Decodes a reply; the error names what sent it.
fn decode<T: FromRedisValue>(
    value: ::redis::Value,
    sender: impl FnOnce() -> String,
) -> Result<T, Error> {
    T::from_redis_value(value).map_err(|e| {
        Error::decode(format!("{} returned an unexpected reply", sender()))
            .with_source(e.to_string())
    })
}
