//! tollgate-plugin-support: the proxy-wasm SDK glue every Tollgate plugin would otherwise repeat. A plugin names
//! itself, says how to parse its configuration and how to make a stream from it; [`ConfiguredRoot`] reads the
//! configuration in `on_configure`, refuses a bad one with an error log (`<plugin>: invalid configuration:
//! <reason>`, the wording plugins/README.md promises), keeps a good one in an `Rc` and shares it with every stream.
//! Plugins whose root context does more (ticks, queues) call [`read_configuration`] from their own.

#![forbid(unsafe_code)]

use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};

/// Turns the configuration bytes into the plugin's configuration, or says why they are not one.
pub type Parse<C> = fn(&[u8]) -> Result<C, String>;

/// Makes the HTTP context of one stream (its context id, the configuration).
pub type NewStream<C> = fn(u32, Rc<C>) -> Box<dyn HttpContext>;

/// The configuration text for plugins whose every setting is optional: empty (or blank) bytes mean `{}`.
pub fn empty_as_object(bytes: &[u8]) -> &[u8] {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    }
}

/// Reads and parses the plugin configuration of `root`; on failure logs why at error level and returns None, so
/// `on_configure` can return false and the gateway refuses the configuration.
pub fn read_configuration<C>(root: &(impl RootContext + ?Sized), name: &str, parse: Parse<C>) -> Option<C> {
    let bytes = root.get_plugin_configuration().unwrap_or_default();
    match parse_named(name, parse, &bytes) {
        Ok(config) => Some(config),
        Err(message) => {
            let _ = hostcalls::log(LogLevel::Error, &message);
            None
        }
    }
}

/// `parse`, with a failure turned into the log line that names the plugin.
fn parse_named<C>(name: &str, parse: Parse<C>, bytes: &[u8]) -> Result<C, String> {
    parse(bytes).map_err(|reason| format!("{name}: invalid configuration: {reason}"))
}

/// A root context that only configures and creates streams.
pub struct ConfiguredRoot<C> {
    name: &'static str,
    parse: Parse<C>,
    new_stream: NewStream<C>,
    /// The last configuration that parsed; a refused one leaves it as it was.
    config: Option<Rc<C>>,
}

impl<C> ConfiguredRoot<C> {
    pub fn new(name: &'static str, parse: Parse<C>, new_stream: NewStream<C>) -> ConfiguredRoot<C> {
        ConfiguredRoot {
            name,
            parse,
            new_stream,
            config: None,
        }
    }
}

impl<C> Context for ConfiguredRoot<C> {}

impl<C> RootContext for ConfiguredRoot<C> {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        match read_configuration(self, self.name, self.parse) {
            Some(config) => {
                self.config = Some(Rc::new(config));
                true
            }
            None => false,
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        // The gateway creates no stream before a successful on_configure, so `config` is set here.
        let config = self.config.clone()?;
        Some((self.new_stream)(context_id, config))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number(bytes: &[u8]) -> Result<u32, String> {
        let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
        text.trim().parse().map_err(|_| format!("{text:?} is not a number"))
    }

    #[test]
    fn blank_configuration_is_an_empty_object() {
        assert_eq!(empty_as_object(b""), b"{}");
        assert_eq!(empty_as_object(b" \n\t"), b"{}");
        assert_eq!(empty_as_object(br#"{"a":1}"#), br#"{"a":1}"#);
    }

    #[test]
    fn a_refusal_names_the_plugin_and_the_reason() {
        assert_eq!(parse_named("counter", number, b"12"), Ok(12));
        assert_eq!(
            parse_named("counter", number, b"twelve"),
            Err(r#"counter: invalid configuration: "twelve" is not a number"#.to_string())
        );
    }
}
