//! Config errors: every problem found in one pass, each with the path of the
//! offending field (`hosts[3].routes[0].proxy.cluster`).

use std::fmt;

/// One problem with one field of the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path with list indices, e.g. `clusters[1].endpoints[0].address`;
    /// empty for problems with the file as a whole (YAML syntax, I/O).
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every error found in a config, in the order of the fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<FieldError>);

impl ConfigErrors {
    pub(crate) fn single(path: impl Into<String>, message: impl Into<String>) -> ConfigErrors {
        ConfigErrors(vec![FieldError {
            path: path.into(),
            message: message.into(),
        }])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, error) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects errors while walking the config; paths are built lazily so a valid
/// config costs no string formatting.
#[derive(Default)]
pub(crate) struct Errors(Vec<FieldError>);

impl Errors {
    pub fn add(&mut self, path: impl fmt::Display, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.to_string(),
            message: message.into(),
        });
    }

    /// Takes over `other`'s errors, their paths' leading `from` replaced by `to`.
    pub fn absorb(&mut self, other: Errors, from: &str, to: &str) {
        self.0.extend(other.0.into_iter().map(|error| FieldError {
            path: match error.path.strip_prefix(from) {
                Some(rest) => format!("{to}{rest}"),
                None => error.path,
            },
            message: error.message,
        }));
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn into_result<T>(self, value: T) -> Result<T, ConfigErrors> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(ConfigErrors(self.0))
        }
    }
}
