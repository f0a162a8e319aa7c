//! Admission proper, right before a request goes upstream: the request-per-minute slot is
//! taken and the tokens the request may use are reserved against TPM and the quota (its
//! `max_tokens`, or `[limits] reserve_completion_tokens`, plus an estimate of its prompt);
//! when it ends the reservation is settled with the real usage. A request refused before this
//! point (auth, allow-list, validation, media policy, the gateway's own limits) consumed
//! nothing. Concurrent requests admitted while the counters are under their limit can
//! overshoot by at most what the last admitted ones use beyond their reservations.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{
    Counters, Limiter, Local, Shared, limited, minute_now, period_id, redis_keys,
    seconds_to_next_minute, seconds_to_next_period,
};
use crate::auth::{Caller, Limits};
use crate::error::{GatewayError, Limit};
use crate::store::now_ms;

/// What an admitted request holds against its key's limits until it is settled.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reservation {
    /// Tokens added to the minute's and the quota period's counters at admission.
    pub tokens: u64,
    /// When it was taken (ms): the windows it was counted in.
    pub at: i64,
}

impl Limiter {
    /// Takes the rpm slot and reserves `tokens`; `None` when the key has no limits or the
    /// shared limiter could not be reached and lets requests through.
    pub async fn reserve(
        &self,
        caller: &Caller,
        tokens: u64,
    ) -> Result<Option<Reservation>, GatewayError> {
        if !caller.limits.any() {
            return Ok(None);
        }
        match self {
            Limiter::Local(local) => local.reserve(caller, tokens).await.map(Some),
            Limiter::Redis(shared) => shared.reserve(caller, tokens).await,
        }
    }

    /// Settles a finished request: its real tokens replace what was reserved. Never waits.
    pub fn settle(
        &self,
        name: &Arc<str>,
        limits: &Limits,
        reservation: Option<Reservation>,
        tokens: u64,
    ) {
        if limits.tpm.is_none() && limits.token_quota.is_none() {
            return;
        }
        let reserved = reservation.map_or(0, |r| r.tokens);
        if tokens == 0 && reserved == 0 {
            return;
        }
        let at = reservation.map_or_else(now_ms, |r| r.at);
        match self {
            Limiter::Local(local) => local.settle(name, limits, at, reserved, tokens),
            Limiter::Redis(shared) => {
                let delta = i64::try_from(tokens).unwrap_or(i64::MAX)
                    - i64::try_from(reserved).unwrap_or(i64::MAX);
                if delta != 0 {
                    shared.adjust(name, limits, at, delta);
                }
            }
        }
    }
}

/// Adds `add` and takes away `sub`, never below zero.
fn adjust(counter: &AtomicU64, add: u64, sub: u64) {
    let _ = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
        Some(n.saturating_add(add).saturating_sub(sub))
    });
}

/// Adds `tokens` if the counter is still under `limit`.
fn take_if_under(counter: &AtomicU64, limit: u64, tokens: u64) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < limit).then_some(n.saturating_add(tokens))
        })
        .is_ok()
}

impl Local {
    async fn reserve(&self, caller: &Caller, tokens: u64) -> Result<Reservation, GatewayError> {
        let now = now_ms();
        let c = self.counters(&caller.name);
        c.roll_minute(minute_now(now));
        let limits = &caller.limits;
        if limits.token_quota.is_some() {
            self.load_period(caller, &c, now).await;
        }
        // Each check-and-add is atomic; a later refusal gives back what the earlier took.
        if let Some(rpm) = limits.rpm {
            if !take_if_under(&c.requests, rpm, 1) {
                return Err(limited(
                    Limit::RequestsPerMinute,
                    seconds_to_next_minute(now),
                ));
            }
        }
        let give_back_rpm = |c: &Counters| {
            if limits.rpm.is_some() {
                adjust(&c.requests, 0, 1);
            }
        };
        if let Some(tpm) = limits.tpm {
            if !take_if_under(&c.tokens, tpm, tokens) {
                give_back_rpm(&c);
                return Err(limited(Limit::TokensPerMinute, seconds_to_next_minute(now)));
            }
        }
        if let Some(quota) = limits.token_quota {
            if !take_if_under(&c.quota_used, quota, tokens) {
                give_back_rpm(&c);
                if limits.tpm.is_some() {
                    adjust(&c.tokens, 0, tokens);
                }
                let wait = seconds_to_next_period(limits.quota_period, now);
                return Err(limited(Limit::TokenQuota, wait));
            }
        }
        Ok(Reservation { tokens, at: now })
    }

    fn settle(&self, name: &Arc<str>, limits: &Limits, at: i64, reserved: u64, tokens: u64) {
        let now = now_ms();
        let c = self.counters(name);
        let minute = minute_now(now);
        c.roll_minute(minute);
        // A reservation from a window that has turned over is gone with it.
        let same_minute = minute_now(at) == minute;
        if limits.tpm.is_some() {
            adjust(&c.tokens, tokens, if same_minute { reserved } else { 0 });
        }
        if limits.token_quota.is_some() {
            let same_period =
                period_id(limits.quota_period, at) == period_id(limits.quota_period, now);
            adjust(
                &c.quota_used,
                tokens,
                if same_period { reserved } else { 0 },
            );
        }
    }
}

impl Shared {
    async fn reserve(
        &self,
        caller: &Caller,
        tokens: u64,
    ) -> Result<Option<Reservation>, GatewayError> {
        let now = now_ms();
        let tokens_arg = i64::try_from(tokens).unwrap_or(i64::MAX);
        match self.check(caller, now, tokens_arg).await {
            Ok(true) => Ok(Some(Reservation { tokens, at: now })),
            Ok(false) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Moves the reservation's windows by `delta` tokens (a negative one gives some back).
    fn adjust(&self, name: &Arc<str>, limits: &Limits, at: i64, delta: i64) {
        let keys = redis_keys(name, limits, at);
        self.spend_keys(keys, limits, delta);
    }
}
