//! Drives one HTTP stream through the plugins that apply to its route, in
//! order: creates each plugin's stream context, runs the header, body and
//! trailer callbacks, waits out a pause by performing the http/redis calls
//! the plugin dispatched, and turns faults into the plugin's fail strategy.
//!
//! An instance's lock is held for one callback at a time and never across an
//! await, so a worker sharing an instance with others blocks them only for
//! the length of a call (bounded by the watchdog).

use std::net::SocketAddr;
use std::sync::Arc;

use super::abi::RedisSettings;
use super::callout;
use super::instance::{Action, BodyAction, Fault, LocalResponse, PluginInstance};
use super::pool::{describe, LoadedPlugin};
use super::StreamData;
use crate::config::FailStrategy;

/// How the chain answers a phase.
#[derive(Debug)]
pub enum Verdict {
    /// Go on with the exchange.
    Continue,
    /// Answer the client with this response instead.
    Respond(LocalResponse),
    /// A plugin could not run and its strategy is `fail_closed`, or a plugin
    /// paused the stream with nothing that could resume it.
    Fail { status: u16, reason: String },
    /// A plugin closed the stream: drop the client connection.
    Close,
}

/// Which side of the stream a body or trailer callback is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Request,
    Response,
}

/// Finds where a plugin's call goes: a cluster name to one endpoint address.
pub trait CallTargets {
    fn endpoint(&self, cluster: &str) -> Option<SocketAddr>;
}

struct Entry {
    plugin: Arc<LoadedPlugin>,
    slot: usize,
    generation: u64,
    context: u32,
    /// False once the plugin failed open for this stream.
    active: bool,
    /// Body bytes this plugin asked to buffer, per direction.
    held: [Vec<u8>; 2],
}

pub struct StreamChain {
    entries: Vec<Entry>,
    pub data: StreamData,
    worker: usize,
    max_buffered: u64,
}

enum Step {
    Next,
    Stop(Verdict),
}

impl StreamChain {
    /// Creates each plugin's context for a new stream on `worker`. A plugin
    /// with no ready instance follows its fail strategy right away.
    pub fn start<'p>(
        plugins: impl Iterator<Item = &'p Arc<LoadedPlugin>>,
        worker: usize,
        data: StreamData,
        max_buffered: u64,
    ) -> StreamChain {
        let mut chain = StreamChain {
            entries: Vec::new(),
            data,
            worker,
            max_buffered,
        };
        for plugin in plugins {
            let mut entry = Entry {
                plugin: Arc::clone(plugin),
                slot: 0,
                generation: 0,
                context: 0,
                active: false,
                held: [Vec::new(), Vec::new()],
            };
            if let Some(mut lease) = plugin.lease_for_new_stream(worker) {
                let created = lease.instance().create_stream();
                plugin.stats.call(worker, lease.instance().take_busy_time());
                match created {
                    Ok(context) => {
                        entry.slot = lease.slot;
                        entry.generation = lease.generation;
                        entry.context = context;
                        entry.active = true;
                    }
                    Err(fault) => plugin.fault(lease, &fault, worker),
                }
            }
            chain.entries.push(entry);
        }
        chain
    }

    /// The route's `max_buffered_body_bytes`.
    pub fn max_buffered(&self) -> u64 {
        self.max_buffered
    }

    /// Whether some plugin holds body bytes it asked to buffer.
    pub fn holds_body(&self, direction: Direction) -> bool {
        self.entries.iter().any(|e| !e.held[direction as usize].is_empty())
    }

    /// Plugins that could not start a context and fail closed.
    pub fn start_failure(&self) -> Option<Verdict> {
        self.entries
            .iter()
            .find(|e| !e.active && e.plugin.fail_strategy == FailStrategy::FailClosed)
            .map(|e| Verdict::Fail {
                status: 503,
                reason: format!("plugin {} is unavailable ({})", e.plugin.name, e.plugin.down_reason()),
            })
    }

    pub async fn request_headers(&mut self, targets: &impl CallTargets, end_of_stream: bool) -> Verdict {
        self.header_phase(targets, Direction::Request, |i, ctx, data| {
            i.on_request_headers(ctx, data, end_of_stream)
        })
        .await
    }

    pub async fn response_headers(&mut self, targets: &impl CallTargets, end_of_stream: bool) -> Verdict {
        self.header_phase(targets, Direction::Response, |i, ctx, data| {
            i.on_response_headers(ctx, data, end_of_stream)
        })
        .await
    }

    pub async fn trailers(&mut self, targets: &impl CallTargets, direction: Direction) -> Verdict {
        self.header_phase(targets, direction, |i, ctx, data| match direction {
            Direction::Request => i.on_request_trailers(ctx, data),
            Direction::Response => i.on_response_trailers(ctx, data),
        })
        .await
    }

    async fn header_phase(
        &mut self,
        targets: &impl CallTargets,
        direction: Direction,
        callback: impl Fn(&mut PluginInstance, u32, &mut StreamData) -> Result<Action, Fault>,
    ) -> Verdict {
        for index in 0..self.entries.len() {
            self.clear_resume(direction);
            let action = match self.call(index, |i, ctx, data| callback(i, ctx, data)) {
                Ok(Some(action)) => action,
                Ok(None) => continue,
                Err(verdict) => return verdict,
            };
            if let Some(verdict) = self.after_local_response() {
                return verdict;
            }
            if action == Action::Pause {
                if let Step::Stop(verdict) = self.wait_for_resume(index, targets, direction).await {
                    return verdict;
                }
            }
        }
        Verdict::Continue
    }

    /// Runs `chunk` through the body callbacks. Returns the bytes to pass on
    /// (possibly rewritten, possibly nothing while a plugin buffers) or how
    /// the stream ends. With `end_of_stream`, every buffered byte comes out.
    pub async fn body(
        &mut self,
        targets: &impl CallTargets,
        direction: Direction,
        chunk: Vec<u8>,
        end_of_stream: bool,
    ) -> Result<Vec<u8>, Verdict> {
        let side = direction as usize;
        let mut passing = chunk;
        for index in 0..self.entries.len() {
            if !self.entries[index].active {
                continue;
            }
            let held = std::mem::take(&mut self.entries[index].held[side]);
            let buffer = if held.is_empty() {
                passing
            } else {
                let mut held = held;
                held.extend_from_slice(&passing);
                held
            };
            if buffer.len() as u64 > self.max_buffered {
                return Err(Verdict::Fail {
                    status: if direction == Direction::Request { 413 } else { 502 },
                    reason: format!(
                        "plugin {} buffered more than max_buffered_body_bytes ({})",
                        self.entries[index].plugin.name, self.max_buffered
                    ),
                });
            }
            *self.body_slot(direction) = buffer;
            self.clear_resume(direction);
            let action = self.call(index, |instance, ctx, data| match direction {
                Direction::Request => instance.on_request_body(ctx, data, end_of_stream),
                Direction::Response => instance.on_response_body(ctx, data, end_of_stream),
            });
            let action = match action {
                Ok(Some(action)) => action,
                // Failed open: the bytes pass through this plugin untouched.
                Ok(None) => {
                    passing = std::mem::take(self.body_slot(direction));
                    continue;
                }
                Err(verdict) => return Err(verdict),
            };
            if let Some(verdict) = self.after_local_response() {
                return Err(verdict);
            }
            match action {
                BodyAction::Continue => passing = std::mem::take(self.body_slot(direction)),
                BodyAction::Buffer if !end_of_stream => {
                    self.entries[index].held[side] = std::mem::take(self.body_slot(direction));
                    return Ok(Vec::new());
                }
                // Paused (or still buffering at the end): whatever it waits
                // for must resume it before the body goes on.
                BodyAction::Pause | BodyAction::Buffer => {
                    if end_of_stream || !self.data.pending.is_empty() {
                        if let Step::Stop(verdict) = self.wait_for_resume(index, targets, direction).await {
                            return Err(verdict);
                        }
                        passing = std::mem::take(self.body_slot(direction));
                    } else {
                        self.entries[index].held[side] = std::mem::take(self.body_slot(direction));
                        return Ok(Vec::new());
                    }
                }
            }
        }
        Ok(passing)
    }

    /// Ends every context: on_done, on_log, on_delete. Runs once, from drop
    /// at the latest, so a stream cut off midway still frees its contexts.
    pub fn finish(&mut self) {
        for index in 0..self.entries.len() {
            let _ = self.call(index, |instance, ctx, data| {
                instance.finish_stream(ctx, data).map(|()| Action::Continue)
            });
            self.entries[index].active = false;
        }
    }

    fn body_slot(&mut self, direction: Direction) -> &mut Vec<u8> {
        match direction {
            Direction::Request => &mut self.data.request_body,
            Direction::Response => &mut self.data.response_body,
        }
    }

    fn clear_resume(&mut self, direction: Direction) {
        match direction {
            Direction::Request => self.data.resume_request = false,
            Direction::Response => self.data.resume_response = false,
        }
    }

    fn resumed(&self, direction: Direction) -> bool {
        match direction {
            Direction::Request => self.data.resume_request,
            Direction::Response => self.data.resume_response,
        }
    }

    fn after_local_response(&mut self) -> Option<Verdict> {
        if self.data.close {
            return Some(Verdict::Close);
        }
        self.data.local_response.take().map(Verdict::Respond)
    }

    /// Calls into the entry's instance. `Ok(None)`: the plugin is skipped
    /// (inactive, or it failed open just now). `Err`: the stream must stop.
    fn call<T>(
        &mut self,
        index: usize,
        callback: impl FnOnce(&mut PluginInstance, u32, &mut StreamData) -> Result<T, Fault>,
    ) -> Result<Option<T>, Verdict> {
        let entry = &mut self.entries[index];
        if !entry.active {
            return Ok(None);
        }
        let Some(mut lease) = entry.plugin.lease(entry.slot, Some(entry.generation)) else {
            // The instance that held this stream's context was replaced after a fault.
            entry.active = false;
            return fail(entry, "lost its instance");
        };
        let result = callback(lease.instance(), entry.context, &mut self.data);
        entry.plugin.stats.call(self.worker, lease.instance().take_busy_time());
        match result {
            Ok(value) => Ok(Some(value)),
            Err(fault) => {
                entry.plugin.fault(lease, &fault, self.worker);
                entry.active = false;
                fail(entry, describe(fault.kind))
            }
        }
    }

    /// Performs the calls plugin `index` dispatched and delivers their
    /// answers until it resumes the stream, answers it, or has nothing left
    /// to wait for.
    async fn wait_for_resume(&mut self, index: usize, targets: &impl CallTargets, direction: Direction) -> Step {
        loop {
            if self.resumed(direction) {
                return Step::Next;
            }
            let pending = std::mem::take(&mut self.data.pending);
            if pending.is_empty() {
                if !self.entries[index].active {
                    return Step::Next;
                }
                return Step::Stop(Verdict::Fail {
                    status: 500,
                    reason: format!(
                        "plugin {} paused the stream with no call that could resume it",
                        self.entries[index].plugin.name
                    ),
                });
            }
            for call in pending {
                let redis = |cluster: &str| self.redis_settings(index, cluster);
                let answer = callout::perform(call, |cluster| targets.endpoint(cluster), redis).await;
                let delivered = self.call(index, |instance, _, data| {
                    answer.deliver(instance, Some(data)).map(|()| Action::Continue)
                });
                if let Err(verdict) = delivered {
                    return Step::Stop(verdict);
                }
                if let Some(verdict) = self.after_local_response() {
                    return Step::Stop(verdict);
                }
            }
        }
    }

    /// What the plugin gave `proxy_redis_init` for `cluster`.
    fn redis_settings(&self, index: usize, cluster: &str) -> Option<RedisSettings> {
        let entry = &self.entries[index];
        let mut lease = entry.plugin.lease(entry.slot, Some(entry.generation))?;
        lease.instance().redis_settings(cluster)
    }
}

impl Drop for StreamChain {
    fn drop(&mut self) {
        self.finish();
    }
}

fn fail<T>(entry: &Entry, what: &str) -> Result<Option<T>, Verdict> {
    match entry.plugin.fail_strategy {
        FailStrategy::FailOpen => {
            tracing::debug!(plugin = %entry.plugin.name, "plugin {what}: failing open");
            Ok(None)
        }
        FailStrategy::FailClosed => Err(Verdict::Fail {
            status: 503,
            reason: format!("plugin {} {what}", entry.plugin.name),
        }),
    }
}
