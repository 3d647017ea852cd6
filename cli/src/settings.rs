//! Where the API is and which key to use: flags, else `SOMA_API_URL` / `SOMA_API_KEY` (clap
//! reads both), else the `.soma/dev.env` that `ops/dev up` writes, looked for in the current
//! directory and its parents.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use soma_client::Client;

/// Which key a command presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// A tenant's key (`--api-key`, `SOMA_API_KEY`).
    Tenant,
    /// An admin key (`--admin-key`, `SOMA_ADMIN_KEY`), for the operators' commands.
    Admin,
}

impl KeyKind {
    fn variable(self) -> &'static str {
        match self {
            KeyKind::Tenant => "SOMA_API_KEY",
            KeyKind::Admin => "SOMA_ADMIN_KEY",
        }
    }
}

/// The client for the API the flags, the environment or `.soma/dev.env` name, with the key of
/// `kind`.
pub fn client(api_url: Option<String>, api_key: Option<String>, kind: KeyKind) -> anyhow::Result<Client> {
    let dev_env = find_dev_env(&std::env::current_dir()?).map(|path| read_dev_env(&path)).transpose()?;
    let from_dev_env = |name: &str| {
        dev_env.as_ref().and_then(|vars| vars.iter().find(|(key, _)| key == name).map(|(_, value)| value.clone()))
    };
    let Some(url) = api_url.or_else(|| from_dev_env("SOMA_API_URL")) else {
        bail!("no API to talk to: give --api-url or SOMA_API_URL (or run `ops/dev up`, which writes .soma/dev.env)");
    };
    let variable = kind.variable();
    let Some(key) = api_key.or_else(|| from_dev_env(variable)) else {
        let flag = if kind == KeyKind::Admin { "--admin-key" } else { "--api-key" };
        bail!("no API key: give {flag} or {variable}");
    };
    Ok(Client::new(&url, &key))
}

fn find_dev_env(start: &Path) -> Option<PathBuf> {
    start.ancestors().map(|dir| dir.join(".soma/dev.env")).find(|path| path.is_file())
}

/// The `export NAME=value` lines of a dev.env.
fn read_dev_env(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("export "))
        .filter_map(|assignment| assignment.split_once('='))
        .map(|(name, value)| (name.trim().to_string(), value.trim().trim_matches(['"', '\'']).to_string()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_env_lines_are_read() {
        let dir = std::env::temp_dir().join(format!("soma-cli-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join(".soma")).unwrap();
        std::fs::write(
            dir.join(".soma/dev.env"),
            "# Written by ops/dev up\nexport SOMA_API_URL=http://127.0.0.1:20020\nexport SOMA_API_KEY=k\n",
        )
        .unwrap();
        let nested = dir.join("a/b");
        std::fs::create_dir_all(&nested).unwrap();
        let found = find_dev_env(&nested).unwrap();
        let vars = read_dev_env(&found).unwrap();
        assert!(vars.contains(&("SOMA_API_URL".into(), "http://127.0.0.1:20020".into())));
        assert!(vars.contains(&("SOMA_API_KEY".into(), "k".into())));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
