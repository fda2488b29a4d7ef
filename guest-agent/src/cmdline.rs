//! The agent's settings, read from the `arca.*` parameters of the kernel command line.

/// Errors in `arca.*` parameters.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CmdlineError {
    /// A parameter's value does not parse.
    #[error("Invalid value {value:?} for kernel parameter {key}: {expected}")]
    InvalidValue {
        /// The parameter.
        key: String,
        /// Its value.
        value: String,
        /// What a valid value looks like.
        expected: &'static str,
    },
    /// An `arca.` parameter that this agent does not know.
    #[error("Unknown kernel parameter {0} (a newer host?)")]
    Unknown(String),
}

/// Default vsock port the agent listens on.
pub const DEFAULT_VSOCK_PORT: u32 = 1024;

/// What the host told the agent through the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSettings {
    /// vsock port of the agent's control listener (`arca.vsock_port=`).
    pub vsock_port: u32,
    /// Hostname to set (`arca.hostname=`).
    pub hostname: Option<String>,
    /// Power off once the last container is removed (`arca.poweroff_when_idle=0|1`).
    pub poweroff_when_idle: bool,
}

impl Default for AgentSettings {
    fn default() -> Self {
        Self {
            vsock_port: DEFAULT_VSOCK_PORT,
            hostname: None,
            poweroff_when_idle: true,
        }
    }
}

impl AgentSettings {
    /// Parses a kernel command line (the text of `/proc/cmdline`). Parameters without
    /// the `arca.` prefix belong to the kernel or to other programs and are ignored.
    pub fn from_cmdline(cmdline: &str) -> Result<Self, CmdlineError> {
        let mut settings = Self::default();
        for word in cmdline.split_ascii_whitespace() {
            let Some(param) = word.strip_prefix("arca.") else {
                continue;
            };
            let (key, value) = param.split_once('=').unwrap_or((param, ""));
            let invalid = |expected| CmdlineError::InvalidValue {
                key: format!("arca.{key}"),
                value: value.to_owned(),
                expected,
            };
            match key {
                "vsock_port" => {
                    settings.vsock_port = value
                        .parse()
                        .ok()
                        .filter(|p| *p > 0)
                        .ok_or_else(|| invalid("a port number from 1 to 4294967295"))?;
                }
                "hostname" => {
                    let valid = !value.is_empty()
                        && value.len() <= 64
                        && value
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
                    if !valid {
                        return Err(invalid("1 to 64 letters, digits, '-' or '.'"));
                    }
                    settings.hostname = Some(value.to_owned());
                }
                "poweroff_when_idle" => {
                    settings.poweroff_when_idle = match value {
                        "1" => true,
                        "0" => false,
                        _ => return Err(invalid("0 or 1")),
                    };
                }
                _ => return Err(CmdlineError::Unknown(format!("arca.{key}"))),
            }
        }
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_when_the_cmdline_has_no_arca_parameters() {
        let s = AgentSettings::from_cmdline("console=ttyS0 reboot=k panic=-1").unwrap();
        assert_eq!(s, AgentSettings::default());
    }

    #[test]
    fn reads_every_known_parameter_among_kernel_ones() {
        let s = AgentSettings::from_cmdline(
            "console=ttyS0 arca.vsock_port=5000 quiet arca.hostname=web-1 arca.poweroff_when_idle=0\n",
        )
        .unwrap();
        assert_eq!(
            s,
            AgentSettings {
                vsock_port: 5000,
                hostname: Some("web-1".into()),
                poweroff_when_idle: false
            }
        );
    }

    #[test]
    fn rejects_bad_values_naming_the_parameter() {
        for (cmdline, key) in [
            ("arca.vsock_port=0", "arca.vsock_port"),
            ("arca.vsock_port=http", "arca.vsock_port"),
            ("arca.vsock_port", "arca.vsock_port"),
            ("arca.hostname=a/b", "arca.hostname"),
            ("arca.hostname=", "arca.hostname"),
            ("arca.poweroff_when_idle=yes", "arca.poweroff_when_idle"),
        ] {
            let err = AgentSettings::from_cmdline(cmdline).unwrap_err();
            assert!(
                matches!(&err, CmdlineError::InvalidValue { key: k, .. } if k == key),
                "{cmdline}: {err:?}"
            );
            assert!(err.to_string().contains(key));
        }
    }

    #[test]
    fn rejects_unknown_arca_parameters() {
        assert_eq!(
            AgentSettings::from_cmdline("arca.frobnicate=1"),
            Err(CmdlineError::Unknown("arca.frobnicate".into()))
        );
    }
}
