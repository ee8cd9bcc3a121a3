//! The plugin engine (gateway/src/plugin/{vm,instance,abi,watchdog}) driven
//! directly, without the gateway around it: hand-written proxy-wasm modules
//! in WAT, run in the fast interpreter and, when `tollgate-aotc` has been
//! built, as AOT. Covers header callbacks editing StreamData, local
//! responses, body replacement, http/redis calls and their answers, traps,
//! the watchdog, the memory cap, calls from two threads, ABI 0.1.0 argument
//! lists and the load-time refusals.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate::plugin::{
    set_known_clusters, Action, BodyAction, FaultKind, HttpCallResponse, InstanceSettings, PendingCall, PluginInstance,
    PluginModule, StreamData,
};

/// A proxy-wasm 0.2.1 module. The request header `x-test` picks what
/// `proxy_on_request_headers` does (first byte): `l` local 403 reply, `t`
/// trap, `o` out-of-bounds load, `s` sleep 10 s in WASI, `i` infinite loop, `m` grow memory until it fails then abort, `p`
/// pause, `c` http_call to cluster-a, `r` redis PING to redis-a; every
/// stream gets `x-added: yes`. A plugin configuration starting with `r` is
/// rejected, one starting with `i` loops forever. Response headers: `server` replaced, `x-remove` removed. The
/// request body becomes `REPLACED` at end of stream (buffered before).
const MODULE: &str = r#"
(module
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $get_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_buffer_bytes" (func $set_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_replace_header_map_value" (func $replace_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_remove_header_map_value" (func $remove_header (param i32 i32 i32) (result i32)))
  (import "env" "proxy_send_local_response"
    (func $local_response (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_http_call"
    (func $http_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_continue_stream" (func $continue (param i32) (result i32)))
  (import "env" "proxy_get_status" (func $get_status (param i32 i32 i32) (result i32)))
  (import "env" "proxy_redis_init" (func $redis_init (param i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_redis_call" (func $redis_call (param i32 i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 65536))
  (data (i32.const 0x100) "x-test")
  (data (i32.const 0x110) "x-added")
  (data (i32.const 0x120) "yes")
  (data (i32.const 0x130) "denied")
  ;; one pair: x-why: test
  (data (i32.const 0x140) "\01\00\00\00\05\00\00\00\04\00\00\00x-why\00test\00")
  (data (i32.const 0x180) "server")
  (data (i32.const 0x190) "tollgate-test")
  (data (i32.const 0x1a0) "x-remove")
  (data (i32.const 0x1b0) "REPLACED")
  (data (i32.const 0x1d0) "hello from wat")
  (data (i32.const 0x1e0) "x-call-status")
  (data (i32.const 0x210) "cluster-a")
  ;; :method GET, :path /cb, :authority svc
  (data (i32.const 0x220)
    "\03\00\00\00\07\00\00\00\03\00\00\00\05\00\00\00\03\00\00\00\0a\00\00\00\03\00\00\00"
    ":method\00GET\00:path\00/cb\00:authority\00svc\00")
  (data (i32.const 0x280) "redis-a")
  (data (i32.const 0x290) "*1\0d\0a$4\0d\0aPING\0d\0a")
  (data (i32.const 0x2b8) "x-status")
  ;; A WASI clock subscription: monotonic clock, 10 s relative.
  (data (i32.const 0x300) "\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\01\00\00\00\00\00\00\00"
    "\00\e4\0b\54\02\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $ptr i32)
    global.get $heap
    local.set $ptr
    (global.set $heap (i32.and (i32.add (i32.add (local.get $ptr) (local.get $size)) (i32.const 7)) (i32.const -8)))
    (block $done
      (loop $grow
        (br_if $done (i32.le_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536))))
        (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1)) (then unreachable))
        (br $grow)))
    local.get $ptr)
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) i32.const 1)
  (func (export "proxy_on_configure") (param $root i32) (param $size i32) (result i32)
    (if (i32.eqz (local.get $size)) (then (return (i32.const 1))))
    (drop (call $get_buffer (i32.const 7) (i32.const 0) (local.get $size) (i32.const 0x200) (i32.const 0x204)))
    (if (i32.eq (i32.load8_u (i32.load (i32.const 0x200))) (i32.const 0x69)) (then (loop $spin (br $spin))))
    (i32.ne (i32.load8_u (i32.load (i32.const 0x200))) (i32.const 0x72)))
  (func $added
    (drop (call $add_header (i32.const 0) (i32.const 0x110) (i32.const 7) (i32.const 0x120) (i32.const 3))))
  (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (local $c i32) (local $status i32)
    (drop (call $log (i32.const 2) (i32.const 0x1d0) (i32.const 14)))
    (call $added)
    (if (call $get_header (i32.const 0) (i32.const 0x100) (i32.const 6) (i32.const 0x200) (i32.const 0x204))
      (then (return (i32.const 0))))
    (local.set $c (i32.load8_u (i32.load (i32.const 0x200))))
    (if (i32.eq (local.get $c) (i32.const 0x6c)) ;; l
      (then
        (drop (call $local_response (i32.const 403) (i32.const 0) (i32.const 0) (i32.const 0x130) (i32.const 6)
          (i32.const 0x140) (i32.const 23) (i32.const -1)))
        (return (i32.const 1))))
    (if (i32.eq (local.get $c) (i32.const 0x74)) (then unreachable)) ;; t
    (if (i32.eq (local.get $c) (i32.const 0x6f)) (then (return (i32.load (i32.const -16))))) ;; o
    (if (i32.eq (local.get $c) (i32.const 0x69)) (then (loop $spin (br $spin)))) ;; i
    (if (i32.eq (local.get $c) (i32.const 0x73)) ;; s: sleep 10 s in WASI poll_oneoff
      (then (drop (call $poll_oneoff (i32.const 0x300) (i32.const 0x340) (i32.const 1) (i32.const 0x380)))))
    (if (i32.eq (local.get $c) (i32.const 0x6d)) ;; m
      (then (loop $more
        (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1)) (then unreachable))
        (br $more))))
    (if (i32.eq (local.get $c) (i32.const 0x70)) (then (return (i32.const 1)))) ;; p
    (if (i32.eq (local.get $c) (i32.const 0x63)) ;; c
      (then
        (local.set $status (call $http_call (i32.const 0x210) (i32.const 9) (i32.const 0x220) (i32.const 65)
          (i32.const 0x130) (i32.const 6) (i32.const 0) (i32.const 0) (i32.const 500) (i32.const 0x208)))
        (i32.store8 (i32.const 0x1f0) (i32.add (i32.const 0x30) (local.get $status)))
        (drop (call $add_header (i32.const 0) (i32.const 0x1e0) (i32.const 13) (i32.const 0x1f0) (i32.const 1)))
        (return (i32.const 1))))
    (if (i32.eq (local.get $c) (i32.const 0x72)) ;; r
      (then
        (local.set $status (call $redis_init (i32.const 0x280) (i32.const 7) (i32.const 0) (i32.const 0)
          (i32.const 0) (i32.const 0) (i32.const 50)))
        (if (local.get $status) (then (return (i32.const 0))))
        (drop (call $redis_call (i32.const 0x280) (i32.const 7) (i32.const 0x290) (i32.const 14) (i32.const 0x208)))
        (return (i32.const 1))))
    i32.const 0)
  (func (export "proxy_on_request_body") (param $ctx i32) (param $size i32) (param $eos i32) (result i32)
    (if (i32.eqz (local.get $eos)) (then (return (i32.const 1))))
    (drop (call $set_buffer (i32.const 0) (i32.const 0) (local.get $size) (i32.const 0x1b0) (i32.const 8)))
    i32.const 0)
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (drop (call $replace_header (i32.const 2) (i32.const 0x180) (i32.const 6) (i32.const 0x190) (i32.const 13)))
    (drop (call $remove_header (i32.const 2) (i32.const 0x1a0) (i32.const 8)))
    i32.const 0)
  ;; The answer's body becomes a local 200 reply, and the request resumes. A failed call (no headers)
  ;; becomes a 502 whose body is proxy_get_status's message, with x-status: <two-digit status code>.
  (func (export "proxy_on_http_call_response") (param $ctx i32) (param $token i32) (param $nh i32) (param $bs i32)
    (param $nt i32)
    (local $code i32)
    ;; Answers go to the root context (id 1), as the C++ and Go SDKs expect.
    (if (i32.ne (local.get $ctx) (i32.const 1)) (then unreachable))
    (if (i32.eqz (local.get $nh))
      (then
        (drop (call $get_status (i32.const 0x2a0) (i32.const 0x2a4) (i32.const 0x2a8)))
        (local.set $code (i32.load (i32.const 0x2a0)))
        (i32.store8 (i32.const 0x2b0) (i32.add (i32.const 0x30) (i32.div_u (local.get $code) (i32.const 10))))
        (i32.store8 (i32.const 0x2b1) (i32.add (i32.const 0x30) (i32.rem_u (local.get $code) (i32.const 10))))
        (drop (call $add_header (i32.const 0) (i32.const 0x2b8) (i32.const 8) (i32.const 0x2b0) (i32.const 2)))
        (drop (call $local_response (i32.const 502) (i32.const 0) (i32.const 0) (i32.load (i32.const 0x2a4))
          (i32.load (i32.const 0x2a8)) (i32.const 0) (i32.const 0) (i32.const -1)))
        (drop (call $continue (i32.const 0)))
        (return)))
    (drop (call $get_buffer (i32.const 4) (i32.const 0) (local.get $bs) (i32.const 0x200) (i32.const 0x204)))
    (drop (call $local_response (i32.const 200) (i32.const 0) (i32.const 0) (i32.load (i32.const 0x200))
      (i32.load (i32.const 0x204)) (i32.const 0) (i32.const 0) (i32.const -1)))
    (drop (call $continue (i32.const 0))))
  ;; status 0: the reply becomes a local 200 body; otherwise a 502.
  (func (export "proxy_on_redis_call_response") (param $ctx i32) (param $token i32) (param $status i32)
    (param $size i32)
    (if (i32.ne (local.get $ctx) (i32.const 1)) (then unreachable))
    (if (local.get $status)
      (then
        (drop (call $local_response (i32.const 502) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)
          (i32.const 0) (i32.const 0) (i32.const -1)))
        (return)))
    (drop (call $get_buffer (i32.const 9) (i32.const 0) (local.get $size) (i32.const 0x200) (i32.const 0x204)))
    (drop (call $local_response (i32.const 200) (i32.const 0) (i32.const 0) (i32.load (i32.const 0x200))
      (i32.load (i32.const 0x204)) (i32.const 0) (i32.const 0) (i32.const -1))))
  (func (export "proxy_on_done") (param i32) (result i32) i32.const 1)
  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_delete") (param i32)))
"#;

/// ABI 0.1.0: `proxy_on_request_headers(context_id, headers)`, `malloc`.
const MODULE_0_1_0: &str = r#"
(module
  (import "env" "proxy_add_header_map_value" (func $add_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0x10) "x-abi")
  (data (i32.const 0x30) "x-missing")
  (data (i32.const 0x54) "\ff")
  (data (i32.const 0x20) "0.1.0")
  (func (export "proxy_abi_version_0_1_0"))
  (func (export "malloc") (param i32) (result i32) i32.const 0x1000)
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32) (result i32)
    (drop (call $add_header (i32.const 0) (i32.const 0x10) (i32.const 5) (i32.const 0x20) (i32.const 5)))
    ;; A missing header: Ok with an empty value under 0.1.0 (Envoy). x-missing: <status><length>
    (i32.store8 (i32.const 0x40)
      (i32.add (i32.const 0x30)
        (call $get_header (i32.const 0) (i32.const 0x30) (i32.const 9) (i32.const 0x50) (i32.const 0x54))))
    (i32.store8 (i32.const 0x41) (i32.add (i32.const 0x30) (i32.load (i32.const 0x54))))
    (drop (call $add_header (i32.const 0) (i32.const 0x30) (i32.const 9) (i32.const 0x40) (i32.const 2)))
    i32.const 0))
"#;

fn settings(name: &str) -> InstanceSettings {
    InstanceSettings {
        plugin_name: name.into(),
        root_id: String::new(),
        vm_configuration: Vec::new(),
        plugin_configuration: b"{}".to_vec(),
        max_memory_bytes: 4 * 65536,
        max_call_time: Duration::from_millis(100),
        environment: Vec::new(),
    }
}

fn module(wat: &str) -> Arc<PluginModule> {
    Arc::new(PluginModule::load(wat::parse_str(wat).expect("test WAT parses")).expect("module loads"))
}

fn header<'a>(map: &'a [(Vec<u8>, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    map.iter()
        .find(|(k, _)| k == name.as_bytes())
        .map(|(_, v)| v.as_slice())
}

fn request(test: &str) -> StreamData {
    let mut s = StreamData {
        request_headers: vec![
            (b":method".to_vec(), b"GET".to_vec()),
            (b":path".to_vec(), b"/".to_vec()),
            (b":authority".to_vec(), b"example.com".to_vec()),
        ],
        ..Default::default()
    };
    if !test.is_empty() {
        s.request_headers.push((b"x-test".to_vec(), test.as_bytes().to_vec()));
    }
    s
}

/// Header callbacks edit the stream's maps; the body is buffered then replaced.
fn exercise_headers_and_body(module: &Arc<PluginModule>) {
    let mut instance = PluginInstance::start(module, &settings("engine-headers")).unwrap();
    let ctx = instance.create_stream().unwrap();
    let mut s = request("");
    assert_eq!(
        instance.on_request_headers(ctx, &mut s, false).unwrap(),
        Action::Continue
    );
    assert_eq!(header(&s.request_headers, "x-added"), Some(&b"yes"[..]));

    s.request_body = b"first".to_vec();
    assert_eq!(
        instance.on_request_body(ctx, &mut s, false).unwrap(),
        BodyAction::Buffer
    );
    s.request_body = b"first+second".to_vec();
    assert_eq!(
        instance.on_request_body(ctx, &mut s, true).unwrap(),
        BodyAction::Continue
    );
    assert_eq!(s.request_body, b"REPLACED");

    s.response_headers = vec![
        (b":status".to_vec(), b"200".to_vec()),
        (b"server".to_vec(), b"upstream".to_vec()),
        (b"x-remove".to_vec(), b"1".to_vec()),
        (b"Server".to_vec(), b"dup".to_vec()),
    ];
    assert_eq!(
        instance.on_response_headers(ctx, &mut s, true).unwrap(),
        Action::Continue
    );
    assert_eq!(
        s.response_headers,
        vec![
            (b":status".to_vec(), b"200".to_vec()),
            (b"server".to_vec(), b"tollgate-test".to_vec())
        ]
    );
    instance.finish_stream(ctx, &mut s).unwrap();
    assert!(s.local_response.is_none());
}

#[test]
fn header_callbacks_edit_stream_data_interp() {
    exercise_headers_and_body(&module(MODULE));
}

#[test]
fn local_response_is_recorded_on_the_stream() {
    let module = module(MODULE);
    let mut instance = PluginInstance::start(&module, &settings("engine-local")).unwrap();
    let ctx = instance.create_stream().unwrap();
    let mut s = request("l");
    assert_eq!(instance.on_request_headers(ctx, &mut s, true).unwrap(), Action::Pause);
    let local = s.local_response.take().expect("a local response");
    assert_eq!(local.status, 403);
    assert_eq!(local.body, b"denied");
    assert_eq!(local.headers, vec![(b"x-why".to_vec(), b"test".to_vec())]);
}

#[test]
fn configuration_rejected_by_the_plugin_refuses_the_start() {
    let module = module(MODULE);
    let mut bad = settings("engine-reject");
    bad.plugin_configuration = b"reject".to_vec();
    let err = PluginInstance::start(&module, &bad).unwrap_err();
    assert_eq!(err, "plugin rejected its configuration");
    assert!(PluginInstance::start(&module, &settings("engine-reject")).is_ok());

    // A start-up call gets at least a second before the watchdog ends it.
    let mut spin = settings("engine-reject");
    spin.plugin_configuration = b"infinite".to_vec();
    let started = Instant::now();
    let err = PluginInstance::start(&module, &spin).unwrap_err();
    let took = started.elapsed();
    assert!(err.starts_with("proxy_on_configure failed: timeout"), "{err}");
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(2),
        "{took:?}"
    );
}

#[test]
fn trap_faults_and_poisons_the_instance() {
    let module = module(MODULE);
    let mut instance = PluginInstance::start(&module, &settings("engine-trap")).unwrap();
    let ctx = instance.create_stream().unwrap();
    let mut s = request("t");
    let fault = instance.on_request_headers(ctx, &mut s, true).unwrap_err();
    assert_eq!(fault.kind, FaultKind::Trap, "{fault}");
    assert!(fault.message.contains("unreachable"), "{fault}");
    // The stream's data came back even though the call trapped.
    assert_eq!(header(&s.request_headers, "x-added"), Some(&b"yes"[..]));
    assert!(instance.is_poisoned());
    let again = instance.create_stream().unwrap_err();
    assert!(again.message.contains("poisoned"), "{again}");
    // Another instance of the same module is unaffected.
    let mut other = PluginInstance::start(&module, &settings("engine-trap")).unwrap();
    let ctx = other.create_stream().unwrap();
    assert_eq!(
        other.on_request_headers(ctx, &mut request(""), true).unwrap(),
        Action::Continue
    );
}

/// An out-of-bounds load traps (AOT files must carry software bounds checks:
/// the runtime has no hardware ones).
fn assert_out_of_bounds_traps(module: &Arc<PluginModule>) {
    let mut instance = PluginInstance::start(module, &settings("engine-oob")).unwrap();
    let ctx = instance.create_stream().unwrap();
    let fault = instance.on_request_headers(ctx, &mut request("o"), true).unwrap_err();
    assert_eq!(fault.kind, FaultKind::Trap, "{fault}");
    assert!(fault.message.contains("out of bounds memory access"), "{fault}");
}

#[test]
fn out_of_bounds_access_traps_interp() {
    assert_out_of_bounds_traps(&module(MODULE));
}

fn assert_loop_is_terminated(module: &Arc<PluginModule>) {
    let mut instance = PluginInstance::start(module, &settings("engine-loop")).unwrap();
    let ctx = instance.create_stream().unwrap();
    let started = Instant::now();
    let fault = instance.on_request_headers(ctx, &mut request("i"), true).unwrap_err();
    let took = started.elapsed();
    assert_eq!(fault.kind, FaultKind::Timeout, "{fault}");
    assert!(took >= Duration::from_millis(100), "returned after {took:?}");
    assert!(took < Duration::from_millis(600), "terminated only after {took:?}");
}

#[test]
fn infinite_loop_is_terminated_by_the_watchdog_interp() {
    assert_loop_is_terminated(&module(MODULE));
}

/// A WASI clock sleep is not a loop: WAMR ends it at its next 1 s slice.
#[test]
fn sleeping_in_wasi_is_interrupted_by_the_watchdog() {
    let module = module(MODULE);
    let mut instance = PluginInstance::start(&module, &settings("engine-sleep")).unwrap();
    let ctx = instance.create_stream().unwrap();
    let started = Instant::now();
    let fault = instance.on_request_headers(ctx, &mut request("s"), true).unwrap_err();
    let took = started.elapsed();
    assert_eq!(fault.kind, FaultKind::Timeout, "{fault}");
    // WAMR sleeps in 1 s slices and checks for termination between them.
    assert!(took < Duration::from_millis(1600), "a 10 s sleep ended after {took:?}");
}

#[test]
fn memory_cap_turns_into_a_memory_fault() {
    let module = module(MODULE);
    let mut instance = PluginInstance::start(&module, &settings("engine-memory")).unwrap();
    assert_eq!(instance.memory_bytes(), 2 * 65536);
    let ctx = instance.create_stream().unwrap();
    let fault = instance.on_request_headers(ctx, &mut request("m"), true).unwrap_err();
    assert_eq!(fault.kind, FaultKind::Memory, "{fault}");
    assert_eq!(instance.memory_bytes(), 4 * 65536, "grew exactly to the cap");

    // A cap below the module's initial memory refuses the start.
    let mut small = settings("engine-memory");
    small.max_memory_bytes = 65536;
    let err = PluginInstance::start(&module, &small).unwrap_err();
    assert!(err.contains("starts with 131072 bytes"), "{err}");
}

#[test]
fn http_call_is_queued_and_its_answer_delivered() {
    set_known_clusters(Arc::new(HashSet::from([
        "cluster-a".to_string(),
        "redis-a".to_string(),
    ])));
    let module = module(MODULE);
    let mut instance = PluginInstance::start(&module, &settings("engine-http")).unwrap();
    let ctx = instance.create_stream().unwrap();
    let mut s = request("c");
    assert_eq!(instance.on_request_headers(ctx, &mut s, true).unwrap(), Action::Pause);
    assert_eq!(header(&s.request_headers, "x-call-status"), Some(&b"0"[..]));
    let call = s.pending.pop().expect("a pending call");
    let PendingCall::Http {
        token,
        context_id,
        cluster,
        headers,
        body,
        timeout,
        ..
    } = call
    else {
        panic!("not an http call: {call:?}")
    };
    assert_eq!(
        (context_id, cluster.as_str(), timeout),
        (ctx, "cluster-a", Duration::from_millis(500))
    );
    assert_eq!(header(&headers, ":path"), Some(&b"/cb"[..]));
    assert_eq!(body, b"denied");
    let answer = HttpCallResponse {
        headers: vec![(b":status".to_vec(), b"200".to_vec())],
        body: b"from upstream".to_vec(),
        trailers: Vec::new(),
    };
    instance
        .on_http_call_response(ctx, token, Some(&mut s), Some(answer))
        .unwrap();
    assert!(s.resume_request);
    let local = s.local_response.take().unwrap();
    assert_eq!((local.status, local.body.as_slice()), (200, &b"from upstream"[..]));

    // A failed call: no headers, and proxy_get_status says BrokenConnection / "reset".
    s.resume_request = false;
    instance.on_http_call_response(ctx, token, Some(&mut s), None).unwrap();
    assert!(s.resume_request);
    assert_eq!(header(&s.request_headers, "x-status"), Some(&b"11"[..]));
    let local = s.local_response.take().unwrap();
    assert_eq!((local.status, local.body.as_slice()), (502, &b"reset"[..]));

    // Delivered to the root context: stream calls are no-ops that return Ok, as in Envoy.
    instance.on_http_call_response(1, token, None, None).unwrap();
    assert!(!instance.is_poisoned());
}

#[test]
fn redis_call_is_queued_and_its_reply_readable_as_buffer_9() {
    set_known_clusters(Arc::new(HashSet::from([
        "cluster-a".to_string(),
        "redis-a".to_string(),
    ])));
    let module = module(MODULE);
    let mut instance = PluginInstance::start(&module, &settings("engine-redis")).unwrap();
    let ctx = instance.create_stream().unwrap();
    let mut s = request("r");
    assert_eq!(instance.on_request_headers(ctx, &mut s, true).unwrap(), Action::Pause);
    let Some(PendingCall::Redis {
        token,
        context_id,
        cluster,
        query,
        timeout,
    }) = s.pending.pop()
    else {
        panic!("no redis call queued")
    };
    assert_eq!((context_id, cluster.as_str()), (ctx, "redis-a"));
    assert_eq!(query, b"*1\r\n$4\r\nPING\r\n");
    assert_eq!(timeout, Duration::from_millis(50));
    assert_eq!(
        instance.redis_settings("redis-a").unwrap().timeout,
        Duration::from_millis(50)
    );
    instance
        .on_redis_call_response(ctx, token, Some(&mut s), Ok(b"+PONG\r\n".to_vec()))
        .unwrap();
    assert_eq!(s.local_response.take().unwrap().body, b"+PONG\r\n");
    instance
        .on_redis_call_response(ctx, token, Some(&mut s), Err(tollgate::plugin::RedisFailure::Timeout))
        .unwrap();
    assert_eq!(s.local_response.take().unwrap().status, 502);
}

#[test]
fn one_instance_called_from_two_threads() {
    calls_from_two_threads(&module(MODULE));
}

/// Start on this thread, call on a second, then on this one, then on a third.
fn calls_from_two_threads(module: &Arc<PluginModule>) {
    let mut instance = PluginInstance::start(module, &settings("engine-threads")).unwrap();
    let ctx = instance.create_stream().unwrap();
    let (mut instance, s) = std::thread::spawn(move || {
        let mut s = request("");
        assert_eq!(
            instance.on_request_headers(ctx, &mut s, false).unwrap(),
            Action::Continue
        );
        (instance, s)
    })
    .join()
    .unwrap();
    assert_eq!(header(&s.request_headers, "x-added"), Some(&b"yes"[..]));
    let mut s = s;
    s.request_body = b"x".to_vec();
    assert_eq!(
        instance.on_request_body(ctx, &mut s, true).unwrap(),
        BodyAction::Continue
    );
    assert_eq!(s.request_body, b"REPLACED");
    // And back on another fresh thread, where the native stack is elsewhere.
    std::thread::spawn(move || {
        let ctx = instance.create_stream().unwrap();
        let mut s = request("l");
        assert_eq!(instance.on_request_headers(ctx, &mut s, true).unwrap(), Action::Pause);
        assert_eq!(s.local_response.unwrap().status, 403);
    })
    .join()
    .unwrap();
}

#[test]
fn abi_0_1_0_gets_its_own_argument_lists() {
    let module = module(MODULE_0_1_0);
    assert_eq!(module.abi_version(), tollgate::plugin::AbiVersion::V0_1_0);
    let mut instance = PluginInstance::start(&module, &settings("engine-abi010")).unwrap();
    let ctx = instance.create_stream().unwrap();
    let mut s = request("");
    assert_eq!(
        instance.on_request_headers(ctx, &mut s, true).unwrap(),
        Action::Continue
    );
    assert_eq!(header(&s.request_headers, "x-abi"), Some(&b"0.1.0"[..]));
    assert_eq!(
        header(&s.request_headers, "x-missing"),
        Some(&b"00"[..]),
        "Ok and length 0"
    );
}

#[test]
fn bad_modules_are_refused_with_a_reason() {
    let err = |bytes: Vec<u8>| PluginModule::load(bytes).unwrap_err();
    assert!(err(b"hello world".to_vec()).contains("not a wasm or AOT file"));

    let mut aot = b"\0aot".to_vec();
    aot.extend_from_slice(&5u32.to_le_bytes());
    aot.extend_from_slice(&[0; 64]);
    let e = err(aot);
    assert!(
        e.contains("AOT format version 5") && e.contains("loads version 6") && e.contains("tollgate-aotc"),
        "{e}"
    );

    let no_abi = wat::parse_str(r#"(module (memory (export "memory") 1))"#).unwrap();
    assert!(err(no_abi).contains("does not export a proxy-wasm ABI version"));

    let no_create = wat::parse_str(
        r#"(module (memory (export "memory") 1) (func (export "proxy_abi_version_0_2_1"))
           (func (export "malloc") (param i32) (result i32) i32.const 0))"#,
    )
    .unwrap();
    assert!(err(no_create).contains("proxy_on_context_create"));

    let wrong_sig = wat::parse_str(
        r#"(module (memory (export "memory") 1) (func (export "proxy_abi_version_0_2_1"))
           (func (export "malloc") (param i32) (result i32) i32.const 0)
           (func (export "proxy_on_context_create") (param i32 i32))
           (func (export "proxy_on_request_headers") (param i32 i32) (result i32) i32.const 0))"#,
    )
    .unwrap();
    let e = err(wrong_sig);
    assert!(e.contains("proxy_on_request_headers takes 2 parameters"), "{e}");

    let invalid = b"\0asm\x01\0\0\0\x01\xff".to_vec();
    assert!(err(invalid).contains("failed to load"));
}

/// `tollgate-aotc` from this workspace's target dir, when it has been built.
fn aotc() -> Option<PathBuf> {
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target");
    ["release", "debug"]
        .iter()
        .map(|profile| target.join(profile).join("tollgate-aotc"))
        .find(|p| p.is_file())
}

/// The AOT file `tollgate-aotc` makes of `wat`, when it has been built.
fn aot_bytes(wat: &str, name: &str) -> Option<Vec<u8>> {
    let Some(aotc) = aotc() else {
        eprintln!("tollgate-aotc not built: skipping the AOT half of this test");
        return None;
    };
    let dir = std::env::temp_dir().join(format!("tollgate-engine-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("m.wasm");
    let output = dir.join("m.aot");
    std::fs::write(&input, wat::parse_str(wat).unwrap()).unwrap();
    let status = Command::new(aotc).arg("-o").arg(&output).arg(&input).status().unwrap();
    assert!(status.success(), "tollgate-aotc failed");
    let bytes = std::fs::read(&output).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    Some(bytes)
}

fn aot_module(wat: &str, name: &str) -> Option<Arc<PluginModule>> {
    let module = PluginModule::load(aot_bytes(wat, name)?).expect("AOT module loads");
    assert!(module.is_aot());
    Some(Arc::new(module))
}

/// `bytes` with the one occurrence of `from` replaced by `to` (same length).
fn replaced(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let at: Vec<usize> = (0..=bytes.len() - from.len())
        .filter(|&i| &bytes[i..i + from.len()] == from)
        .collect();
    assert_eq!(at.len(), 1, "{:?} occurs once", String::from_utf8_lossy(from));
    let mut out = bytes.to_vec();
    out[at[0]..at[0] + to.len()].copy_from_slice(to);
    out
}

/// An AOT file of the right format version but not stamped by this tree's
/// tollgate-aotc (another WAMR release, another patch set or other checks
/// give another stamp; a foreign compiler none) is refused, naming both stamps.
#[test]
fn aot_file_without_this_trees_stamp_is_refused() {
    let Some(aot) = aot_bytes(MODULE, "stamp") else {
        return;
    };
    let (stamp, section) = (wamr_sys::AOT_STAMP, wamr_sys::AOT_STAMP_SECTION);
    PluginModule::load(aot.clone()).expect("the stamped file loads");
    let refusal = "AOT file not built by tollgate-aotc for WAMR 2.4.3 with Tollgate's options (";
    let expects = format!("this gateway expects stamp {stamp:?}): recompile it with tollgate-aotc");

    let release = wamr_sys::WAMR_VERSION.replace(|c: char| c.is_ascii_digit(), "9");
    let foreign = stamp.replace(wamr_sys::WAMR_VERSION, &release);
    assert_ne!(foreign, stamp);
    let e = PluginModule::load(replaced(&aot, stamp.as_bytes(), foreign.as_bytes())).unwrap_err();
    assert!(e.starts_with(refusal), "{e}");
    assert!(e.contains(&format!("its stamp is {foreign:?}, {expects}")), "{e}");

    let unpatched = replaced(stamp.as_bytes(), b"patches:", b"patches-");
    let e = PluginModule::load(replaced(&aot, stamp.as_bytes(), &unpatched)).unwrap_err();
    assert!(e.contains("its stamp is \"tollgate-aotc WAMR 2.4.3 patches-"), "{e}");

    let mut renamed = section.as_bytes().to_vec();
    *renamed.last_mut().unwrap() ^= 0x20;
    let e = PluginModule::load(replaced(&aot, section.as_bytes(), &renamed)).unwrap_err();
    assert_eq!(e, format!("{refusal}it has no stamp, {expects}"));
}

#[test]
fn aot_runs_callbacks_and_is_terminated_by_the_watchdog() {
    let Some(module) = aot_module(MODULE, "aot") else {
        return;
    };
    exercise_headers_and_body(&module);
    calls_from_two_threads(&module);
    assert_out_of_bounds_traps(&module);
    assert_loop_is_terminated(&module);
}

/// The SDK-built `plugins/test-probe` (`cargo build --target wasm32-wasip1
/// --release -p test-probe`), when it has been built.
fn probe_wasm() -> Option<Vec<u8>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip1/release/test_probe.wasm");
    let bytes = std::fs::read(&path).ok();
    if bytes.is_none() {
        eprintln!("{} not built: skipping the SDK probe", path.display());
    }
    bytes
}

fn probe_stream(path: &str, extra: &[(&str, &str)]) -> StreamData {
    let mut s = request("");
    s.request_headers[1].1 = path.as_bytes().to_vec();
    for (k, v) in extra {
        s.request_headers.push((k.as_bytes().to_vec(), v.as_bytes().to_vec()));
    }
    s.properties.request_id = "req-1".into();
    s.properties.source = Some("127.0.0.1:40000".parse().unwrap());
    s.properties.destination = Some("127.0.0.1:8080".parse().unwrap());
    s.properties.route_name = "route-a".into();
    s.properties.cluster_name = "cluster-a".into();
    s
}

/// One request through the Rust SDK probe: properties, shared data with CAS,
/// metrics, the shared queue, an http_call and a buffered body rewrite.
fn exercise_probe(module: &Arc<PluginModule>) {
    set_known_clusters(Arc::new(HashSet::from([
        "cluster-a".to_string(),
        "redis-a".to_string(),
    ])));
    let mut config = settings("test-probe");
    config.plugin_configuration = br#"{"tick_ms": 0}"#.to_vec();
    config.max_memory_bytes = 16 << 20;
    let mut probe = PluginInstance::start(module, &config).unwrap();
    assert_eq!(probe.tick_period(), None);

    let ctx = probe.create_stream().unwrap();
    let mut s = probe_stream("/probe?q=1", &[]);
    assert_eq!(probe.on_request_headers(ctx, &mut s, true).unwrap(), Action::Continue);
    let h = |s: &StreamData, name: &str| String::from_utf8(header(&s.request_headers, name).unwrap().to_vec()).unwrap();
    assert_eq!(h(&s, "x-probe-path"), "/probe?q=1");
    assert_eq!(h(&s, "x-probe-method"), "GET");
    assert_eq!(h(&s, "x-probe-host"), "example.com");
    assert_eq!(h(&s, "x-probe-id"), "req-1");
    assert_eq!(h(&s, "x-probe-protocol"), "HTTP/1.1");
    assert_eq!(h(&s, "x-probe-source"), "127.0.0.1:40000");
    assert_eq!(h(&s, "x-probe-destination"), "127.0.0.1:8080");
    assert_eq!(h(&s, "x-probe-route"), "route-a");
    assert_eq!(h(&s, "x-probe-cluster"), "cluster-a");
    assert_eq!(h(&s, "x-probe-plugin"), "test-probe");
    assert_eq!(h(&s, "x-probe-tls-version"), "-");
    s.response_headers = vec![(b":status".to_vec(), b"200".to_vec())];
    assert_eq!(probe.on_response_headers(ctx, &mut s, true).unwrap(), Action::Continue);
    let hits: u64 = std::str::from_utf8(header(&s.response_headers, "x-probe-hits").unwrap())
        .unwrap()
        .parse()
        .unwrap();
    probe.finish_stream(ctx, &mut s).unwrap();

    // The queue item enqueued by the stream reaches the root context.
    let ready = tollgate::plugin::take_ready_queues();
    let (_, queue) = *ready
        .iter()
        .find(|(id, _)| *id == probe.id())
        .expect("probe-queue is ready");
    probe.on_queue_ready(queue).unwrap();

    // A second stream sees the shared counter move on, and the dequeued count.
    let ctx = probe.create_stream().unwrap();
    let mut s = probe_stream("/two", &[("x-probe-echo-body", "1"), ("x-probe-call", "cluster-a")]);
    assert_eq!(probe.on_request_headers(ctx, &mut s, false).unwrap(), Action::Pause);
    let Some(PendingCall::Http { token, headers, .. }) = s.pending.pop() else {
        panic!("no http call")
    };
    assert_eq!(header(&headers, ":path"), Some(&b"/probe-callout"[..]));
    let answer = HttpCallResponse {
        headers: vec![(b":status".to_vec(), b"201".to_vec())],
        body: b"12345".to_vec(),
        trailers: Vec::new(),
    };
    probe
        .on_http_call_response(ctx, token, Some(&mut s), Some(answer))
        .unwrap();
    assert!(s.resume_request);
    assert_eq!(h(&s, "x-probe-call-status"), "201");
    assert_eq!(h(&s, "x-probe-call-body-bytes"), "5");
    s.request_body = b"hello, ".to_vec();
    assert_eq!(probe.on_request_body(ctx, &mut s, false).unwrap(), BodyAction::Buffer);
    s.request_body = b"hello, world".to_vec();
    assert_eq!(probe.on_request_body(ctx, &mut s, true).unwrap(), BodyAction::Continue);
    assert_eq!(s.request_body, b"HELLO, WORLD");
    s.response_headers = vec![(b":status".to_vec(), b"200".to_vec())];
    probe.on_response_headers(ctx, &mut s, true).unwrap();
    let hits2: u64 = std::str::from_utf8(header(&s.response_headers, "x-probe-hits").unwrap())
        .unwrap()
        .parse()
        .unwrap();
    assert!(hits2 > hits, "{hits2} after {hits}");
    let dequeued: u64 = std::str::from_utf8(header(&s.response_headers, "x-probe-dequeued").unwrap())
        .unwrap()
        .parse()
        .unwrap();
    assert!(dequeued >= 1);
    probe.finish_stream(ctx, &mut s).unwrap();

    // A local reply.
    let ctx = probe.create_stream().unwrap();
    let mut s = probe_stream("/deny", &[("x-probe-deny", "451")]);
    assert_eq!(probe.on_request_headers(ctx, &mut s, true).unwrap(), Action::Pause);
    let local = s.local_response.take().unwrap();
    assert_eq!((local.status, local.body.as_slice()), (451, &b"denied by probe"[..]));
    probe.finish_stream(ctx, &mut s).unwrap();

    let metrics = tollgate::plugin::plugin_metric_values();
    assert!(metrics.iter().any(|(name, _, _)| name == "probe_requests_total"));
}

#[test]
fn sdk_probe_plugin_runs_in_the_interpreter_and_as_aot() {
    let Some(wasm) = probe_wasm() else { return };
    let module = Arc::new(PluginModule::load(wasm.clone()).unwrap());
    assert!(module.unlinked_imports().is_empty(), "every SDK import resolves");
    exercise_probe(&module);
    let Some(aotc) = aotc() else { return };
    let dir = std::env::temp_dir().join(format!("tollgate-engine-{}-probe", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("p.wasm"), wasm).unwrap();
    let status = Command::new(aotc)
        .arg("-o")
        .arg(dir.join("p.aot"))
        .arg(dir.join("p.wasm"))
        .status()
        .unwrap();
    assert!(status.success());
    let module = PluginModule::load(std::fs::read(dir.join("p.aot")).unwrap()).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    exercise_probe(&Arc::new(module));
}

/// A test plugin built by `cargo build --target wasm32-wasip1 --release -p <crate>`, when it has been built.
fn test_plugin(file: &str) -> Option<Arc<PluginModule>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/wasm32-wasip1/release")
        .join(file);
    match std::fs::read(&path) {
        Ok(bytes) => Some(Arc::new(PluginModule::load(bytes).unwrap())),
        Err(_) => {
            eprintln!("{} not built: skipping", path.display());
            None
        }
    }
}

fn start_with(module: &Arc<PluginModule>, name: &str, config: &str, max_memory: u64) -> PluginInstance {
    let mut s = settings(name);
    s.plugin_configuration = config.as_bytes().to_vec();
    s.max_memory_bytes = max_memory;
    PluginInstance::start(module, &s).unwrap()
}

#[test]
fn sdk_alloc_plugin_hits_the_memory_cap_as_a_memory_fault() {
    let Some(module) = test_plugin("test_alloc.wasm") else {
        return;
    };
    let mut instance = start_with(&module, "test-alloc", "{}", 8 << 20);
    let ctx = instance.create_stream().unwrap();
    let fault = instance.on_request_headers(ctx, &mut request(""), true).unwrap_err();
    assert_eq!(fault.kind, FaultKind::Memory, "{fault}");
    assert!(instance.memory_bytes() <= 8 << 20);
}

#[test]
fn sdk_trap_and_loop_plugins_fault() {
    if let Some(module) = test_plugin("test_trap.wasm") {
        let mut instance = start_with(&module, "test-trap", r#"{"on": "response_headers"}"#, 16 << 20);
        let ctx = instance.create_stream().unwrap();
        let mut s = request("");
        assert_eq!(
            instance.on_request_headers(ctx, &mut s, true).unwrap(),
            Action::Continue
        );
        let fault = instance.on_response_headers(ctx, &mut s, true).unwrap_err();
        assert_eq!(fault.kind, FaultKind::Trap, "{fault}");
        let mut bad = settings("test-trap");
        bad.plugin_configuration = br#"{"on": "configure"}"#.to_vec();
        bad.max_memory_bytes = 16 << 20;
        let err = PluginInstance::start(&module, &bad).unwrap_err();
        assert!(err.contains("proxy_on_configure failed: trap"), "{err}");
    }
    if let Some(module) = test_plugin("test_loop.wasm") {
        let mut instance = start_with(&module, "test-loop", r#"{"on": "request_headers"}"#, 16 << 20);
        let ctx = instance.create_stream().unwrap();
        let started = Instant::now();
        let fault = instance.on_request_headers(ctx, &mut request(""), true).unwrap_err();
        assert_eq!(fault.kind, FaultKind::Timeout, "{fault}");
        assert!(
            started.elapsed() < Duration::from_millis(600),
            "{:?}",
            started.elapsed()
        );
    }
}

#[test]
fn sdk_unknown_import_traps_only_when_called_and_grpc_is_refused_softly() {
    let Some(module) = test_plugin("test_unknown_import.wasm") else {
        return;
    };
    assert_eq!(module.unlinked_imports(), ["env.proxy_tollgate_does_not_exist"]);
    let mut instance = start_with(&module, "test-unknown-import", r#"{"call_unknown": false}"#, 16 << 20);
    let ctx = instance.create_stream().unwrap();
    let mut s = request("");
    assert_eq!(
        instance.on_request_headers(ctx, &mut s, true).unwrap(),
        Action::Continue
    );
    instance.on_response_headers(ctx, &mut s, true).unwrap();
    // InternalFailure: an error the SDK's dispatch_grpc_call accepts without panicking.
    assert_eq!(header(&s.response_headers, "x-grpc-status"), Some(&b"10"[..]));

    let mut instance = start_with(&module, "test-unknown-import", "{}", 16 << 20);
    let ctx = instance.create_stream().unwrap();
    let fault = instance.on_request_headers(ctx, &mut request(""), true).unwrap_err();
    assert_eq!(fault.kind, FaultKind::Trap);
    assert!(fault.message.contains("unlinked import"), "{fault}");
}

/// Log output of the whole test process (the subscriber is process-global);
/// writers signal the condvar.
#[derive(Clone, Default)]
struct Captured(Arc<(std::sync::Mutex<Vec<u8>>, std::sync::Condvar)>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 .0.lock().unwrap().extend_from_slice(buf);
        self.0 .1.notify_all();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

#[test]
fn wasi_stdout_and_proxy_log_reach_the_gateway_log() {
    let captured = Captured::default();
    tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_max_level(tracing::Level::INFO)
        .init();
    let module = module(
        r#"(module
          (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
          (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
          (memory (export "memory") 1)
          (data (i32.const 0x400) "\00\05\00\00\10\00\00\00")
          (data (i32.const 0x300) "\10\03\00\00\15\00\00\00")
          (data (i32.const 0x310) "wasi says hello 1234\n")
          (data (i32.const 0x340) "proxy_log says hi")
          (func (export "proxy_abi_version_0_2_1"))
          (func (export "malloc") (param i32) (result i32) i32.const 0x1000)
          (func (export "proxy_on_context_create") (param i32 i32))
          (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
            (drop (call $fd_write (i32.const 1) (i32.const 0x300) (i32.const 1) (i32.const 0x3f0)))
            (drop (call $fd_write (i32.const 2) (i32.const 0x300) (i32.const 1) (i32.const 0x3f0)))
            (drop (call $log (i32.const 3) (i32.const 0x340) (i32.const 17)))
            ;; stdin is empty (/dev/null): read succeeds with 0 bytes.
            (i32.store (i32.const 0x410) (i32.const 99))
            (i32.and
              (i32.eqz (call $fd_read (i32.const 0) (i32.const 0x400) (i32.const 1) (i32.const 0x410)))
              (i32.eqz (i32.load (i32.const 0x410))))))"#,
    );
    PluginInstance::start(&module, &settings("engine-wasi")).unwrap();
    // The stdout reader thread logs asynchronously: wait for its lines.
    let deadline = Instant::now() + Duration::from_secs(5);
    let (lock, written) = &*captured.0;
    let mut log = lock.lock().unwrap();
    loop {
        let text = String::from_utf8_lossy(&log).into_owned();
        if text.matches("output: wasi says hello 1234").count() == 2 && text.contains("proxy_log says hi") {
            assert!(text.contains("engine-wasi"), "{text}");
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "plugin output missing from the log: {text}");
        log = written.wait_timeout(log, left).unwrap().0;
    }
}

/// A WASI command (TinyGo's shape): `_start` runs main, which may end with
/// `proc_exit(0)`; another exit code refuses the start.
#[test]
fn command_modules_start_through_start_and_may_exit_zero() {
    let command = |code: u32| {
        module(&format!(
            r#"(module
              (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
              (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
              (memory (export "memory") 1)
              (global $started (mut i32) (i32.const 0))
              (data (i32.const 0x10) "x-started")
              (func (export "_start") (global.set $started (i32.const 1)) (call $exit (i32.const {code})))
              (func (export "proxy_abi_version_0_2_1"))
              (func (export "malloc") (param i32) (result i32) i32.const 0x1000)
              (func (export "proxy_on_context_create") (param i32 i32))
              (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
                (i32.store8 (i32.const 0x20) (i32.add (i32.const 0x30) (global.get $started)))
                (drop (call $add (i32.const 0) (i32.const 0x10) (i32.const 9) (i32.const 0x20) (i32.const 1)))
                i32.const 0))"#
        ))
    };
    let mut instance = PluginInstance::start(&command(0), &settings("engine-command")).unwrap();
    let ctx = instance.create_stream().unwrap();
    let mut s = request("");
    instance.on_request_headers(ctx, &mut s, true).unwrap();
    assert_eq!(header(&s.request_headers, "x-started"), Some(&b"1"[..]));

    let err = PluginInstance::start(&command(3), &settings("engine-command")).unwrap_err();
    assert_eq!(err, "module initialisation failed: trap: _start exited with code 3");
}
