//! `dashgate keys create | list | revoke`: client keys in the store, from the command line.
//! A new key is printed once, alone on stdout (so `KEY=$(dashgate keys create ...)` works);
//! only its SHA-256 is stored.

use std::process::ExitCode;

use clap::Subcommand;
use dashgate::auth::{hash_key, key_prefix, mint_key};
use dashgate::config::Config;
use dashgate::store::{self, KeyRecord, NewKey, QuotaPeriod, Store, StoreError};

#[derive(Subcommand)]
pub enum Action {
    /// Mint a key; it is printed once.
    Create {
        #[arg(long)]
        name: String,
        /// Comma-separated allow-list of models (default: all).
        #[arg(long, value_delimiter = ',')]
        models: Option<Vec<String>>,
        /// Requests per minute.
        #[arg(long)]
        rpm: Option<u64>,
        /// Tokens per minute.
        #[arg(long)]
        tpm: Option<u64>,
        /// Tokens in all, or per --quota-period.
        #[arg(long)]
        token_quota: Option<u64>,
        /// What the quota counts over: total, day or month (UTC).
        #[arg(long, default_value = "total", value_parser = ["total", "day", "month"])]
        quota_period: String,
        /// Expiry, RFC 3339 (2027-01-31T00:00:00Z).
        #[arg(long)]
        expires: Option<String>,
        /// The account the key belongs to: it may mint device tokens for it (docs/fleet.md).
        #[arg(long)]
        account: Option<String>,
    },
    /// List the keys (never the keys themselves).
    List,
    /// Revoke a key by name or id.
    Revoke {
        #[arg(value_name = "NAME_OR_ID")]
        key: String,
    },
}

impl Action {
    /// Checks the flags before anything is opened; the message names the flag at fault.
    pub fn check(&self) -> Result<(), String> {
        let Action::Create {
            name,
            models,
            expires,
            ..
        } = self
        else {
            return Ok(());
        };
        let new = NewKey {
            name: name.clone(),
            models: models.clone(),
            ..NewKey::default()
        };
        if let Err(e) = dashgate::api::admin::check_new_key(&new) {
            let flag = e.param_name().unwrap_or("name");
            return Err(format!("--{flag}: {e}"));
        }
        if let Some(text) = expires {
            match store::parse_rfc3339(text) {
                None => {
                    return Err(format!(
                        "--expires: `{text}` is not an RFC 3339 time such as 2027-01-31T00:00:00Z"
                    ));
                }
                Some(at) if at <= store::now_ms() => {
                    return Err(format!("--expires: `{text}` is in the past"));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

pub async fn run(config: Config, action: Action) -> ExitCode {
    let store = match Store::open(&config.store.url).await {
        Ok(store) => store,
        Err(e) => {
            eprintln!("dashgate: store.url: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match action {
        Action::Create {
            name,
            models,
            rpm,
            tpm,
            token_quota,
            quota_period,
            expires,
            account,
        } => {
            let new = NewKey {
                name,
                models,
                rpm,
                tpm,
                token_quota,
                quota_period: QuotaPeriod::parse(&quota_period).unwrap_or_default(),
                expires_at: expires.as_deref().and_then(store::parse_rfc3339),
                account,
            };
            create(&store, &new).await
        }
        Action::List => list(&store).await,
        Action::Revoke { key } => revoke(&store, &key).await,
    };
    store.close().await;
    code
}

async fn create(store: &Store, new: &NewKey) -> ExitCode {
    let key = match mint_key() {
        Ok(key) => key,
        Err(e) => {
            eprintln!("dashgate: {e}");
            return ExitCode::FAILURE;
        }
    };
    let hash = hex::encode(hash_key(&key));
    match store.create_key(new, &hash, &key_prefix(&key)).await {
        Ok(record) => {
            println!("{key}");
            eprintln!(
                "created key `{}` ({}): keep it now, it is not shown again",
                record.name, record.id
            );
            ExitCode::SUCCESS
        }
        Err(StoreError::NameTaken(name)) => {
            eprintln!("dashgate: --name: a key named `{name}` exists already");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("dashgate: {e}");
            ExitCode::FAILURE
        }
    }
}

fn status(key: &KeyRecord) -> &'static str {
    key.status_at(store::now_ms()).as_str()
}

async fn list(store: &Store) -> ExitCode {
    let keys = match store.list_keys().await {
        Ok(keys) => keys,
        Err(e) => {
            eprintln!("dashgate: {e}");
            return ExitCode::FAILURE;
        }
    };
    let dash = || "-".to_string();
    let number = |v: Option<u64>| v.map_or_else(dash, |v| v.to_string());
    println!("ID\tNAME\tPREFIX\tSTATUS\tMODELS\tRPM\tTPM\tQUOTA\tEXPIRES");
    for key in &keys {
        let quota = key
            .token_quota
            .map_or_else(dash, |q| format!("{q}/{}", key.quota_period.as_str()));
        println!(
            "{}\t{}\t{}…\t{}\t{}\t{}\t{}\t{}\t{}",
            key.id,
            key.name,
            key.prefix,
            status(key),
            key.models
                .as_ref()
                .map_or_else(|| "*".into(), |m| m.join(",")),
            number(key.rpm),
            number(key.tpm),
            quota,
            key.expires_at.map_or_else(dash, store::rfc3339),
        );
    }
    ExitCode::SUCCESS
}

async fn revoke(store: &Store, key: &str) -> ExitCode {
    match store.revoke_key(key).await {
        Ok(Some(record)) => {
            println!("revoked `{}` ({})", record.name, record.id);
            ExitCode::SUCCESS
        }
        Ok(None) => {
            eprintln!("dashgate: NAME_OR_ID: no key `{key}`");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("dashgate: {e}");
            ExitCode::FAILURE
        }
    }
}
