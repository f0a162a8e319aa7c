//! A device's account limits (docs/fleet.md): counted under `account:NAME`, shared by every
//! device of the account, checked and reserved after the device's own.

use super::{Limiter, Reservation};
use crate::auth::Caller;
use crate::error::GatewayError;

/// The caller the account's counters are kept under, when `caller` is a device with account
/// limits.
pub(super) fn of(caller: &Caller) -> Option<Caller> {
    let (name, limits) = caller.account_limits.as_ref()?;
    Some(Caller {
        name: name.clone(),
        limits: *limits,
        account_limits: None,
        ..caller.clone()
    })
}

impl Limiter {
    /// Takes the account's rpm slot and reserves `tokens` against its tpm; call after
    /// [`Limiter::reserve`] for the device (whose slot stays taken when the account refuses).
    pub async fn reserve_account(
        &self,
        caller: &Caller,
        tokens: u64,
    ) -> Result<Option<Reservation>, GatewayError> {
        match of(caller) {
            Some(account) => self.reserve(&account, tokens).await,
            None => Ok(None),
        }
    }
}
