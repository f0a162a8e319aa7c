//! The handler layer: the HTTP handlers that take the `AppState` and call the domain modules
//! (`files`, `session`, `device`, `console`, `store`), which keep their types and logic and take
//! only the parts of the state they use. Kept apart from those modules because the `AppState`
//! holds their types: a handler beside its domain type would make the domain import the state
//! that imports it.

pub mod admin;
pub mod console;
pub mod device;
pub mod files;
pub mod sessions;
