//! `POST /v1/device-tokens` (an account's key, or the admin token, mints a token for one
//! device) and `POST /admin/api/devices/revoke` (refuses a device's or an account's tokens
//! issued so far).

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;

use crate::device::token::{self, Claims};
use crate::error::{GatewayError, json_response};
use crate::state::{AppState, RequestId};
use crate::store::{now_ms, rfc3339};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MintRequest {
    device_id: String,
    ttl_seconds: u64,
    #[serde(default)]
    models: Option<Vec<String>>,
    #[serde(default)]
    rpm: Option<u64>,
    #[serde(default)]
    tpm: Option<u64>,
    /// Only with the admin token: the account to mint for (a key names its own).
    #[serde(default)]
    account: Option<String>,
}

/// Ids are short and plain: they end up in ledger rows, limiter keys and log lines.
fn check_id(field: &str, id: &str) -> Result<(), GatewayError> {
    let ok = (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(GatewayError::param(
            field,
            format!("{field} must be 1 to 128 letters, digits or - _ . : @"),
        ))
    }
}

pub async fn mint(
    State(state): State<Arc<AppState>>,
    Extension(RequestId(id)): Extension<RequestId>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match mint_inner(&state, &headers, &body).await {
        Ok(response) => response,
        Err(error) => error.into_openai_response(&id),
    }
}

async fn mint_inner(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, GatewayError> {
    let admin = state.console.admit(&Method::POST, headers).is_some();
    let minter = if admin {
        None
    } else {
        Some(state.auth.authenticate(headers).await?)
    };
    let request: MintRequest =
        serde_json::from_slice(body).map_err(|e| GatewayError::InvalidJson(e.to_string()))?;
    check_id("device_id", &request.device_id)?;
    let devices = &state.devices;
    if request.ttl_seconds == 0 || request.ttl_seconds > devices.max_ttl_seconds {
        return Err(GatewayError::param(
            "ttl_seconds",
            format!(
                "ttl_seconds must be from 1 to {} (devices.max_ttl_seconds)",
                devices.max_ttl_seconds
            ),
        ));
    }
    let (account, models, account_limits) = match &minter {
        None => {
            let account = request.account.clone().ok_or_else(|| {
                GatewayError::param("account", "the admin token mints for a named account")
            })?;
            (account, request.models.clone(), Default::default())
        }
        Some(caller) => {
            if caller.device.is_some() {
                return Err(GatewayError::KeyUnusable(
                    "is a device token, which cannot mint",
                ));
            }
            let Some(account) = caller.account.as_deref() else {
                return Err(GatewayError::KeyUnusable(
                    "names no account ([[keys]] account)",
                ));
            };
            if request.account.as_deref().is_some_and(|a| a != account) {
                return Err(GatewayError::param(
                    "account",
                    "a key mints for its own account only",
                ));
            }
            // A device may use at most what its account's key may.
            let models = match (&request.models, &caller.models) {
                (Some(asked), Some(_)) => {
                    if let Some(model) = asked.iter().find(|m| !caller.may_use(m)) {
                        return Err(GatewayError::ModelNotAllowed(model.clone()));
                    }
                    Some(asked.clone())
                }
                (Some(asked), None) => Some(asked.clone()),
                (None, allowed) => allowed.as_ref().map(|m| m.to_vec()),
            };
            (account.to_string(), models, caller.limits)
        }
    };
    check_id("account", &account)?;
    let now = now_ms();
    let ttl_ms = i64::try_from(request.ttl_seconds.saturating_mul(1000)).unwrap_or(i64::MAX);
    let claims = Claims {
        account,
        device: request.device_id,
        issued_ms: now,
        expires_ms: now.saturating_add(ttl_ms),
        models,
        rpm: request.rpm,
        tpm: request.tpm,
        account_rpm: account_limits.rpm,
        account_tpm: account_limits.tpm,
    };
    let token = token::sign(devices.signing_key(), &claims);
    let body = json!({
        "token": token,
        "expires_at": rfc3339(claims.expires_ms),
        "device_id": claims.device,
        "account": claims.account,
    });
    Ok(json_response(
        StatusCode::OK,
        serde_json::to_vec(&body).unwrap_or_default(),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeRequest {
    account: String,
    #[serde(default)]
    device_id: Option<String>,
}

/// Behind the admin guard (`super::admin`).
pub async fn revoke(
    State(state): State<Arc<AppState>>,
    Extension(RequestId(id)): Extension<RequestId>,
    body: Bytes,
) -> Response {
    let result = async {
        let request: RevokeRequest =
            serde_json::from_slice(&body).map_err(|e| GatewayError::InvalidJson(e.to_string()))?;
        check_id("account", &request.account)?;
        let device = request.device_id.unwrap_or_default();
        if !device.is_empty() {
            check_id("device_id", &device)?;
        }
        let store_failed = |e: crate::store::StoreError| {
            tracing::warn!(error = %e, "device revocation failed");
            GatewayError::StoreUnavailable
        };
        let at = state
            .store
            .revoke_devices(&request.account, &device)
            .await
            .map_err(store_failed)?;
        // This gateway honours it at once; others at their next refresh.
        state
            .devices
            .refresh(&state.store)
            .await
            .map_err(store_failed)?;
        let body = json!({
            "account": request.account,
            "device_id": (!device.is_empty()).then_some(device),
            "revoked_at": rfc3339(at),
        });
        Ok::<_, GatewayError>(json_response(
            StatusCode::OK,
            serde_json::to_vec(&body).unwrap_or_default(),
        ))
    }
    .await;
    result.unwrap_or_else(|e| e.into_openai_response(&id))
}
