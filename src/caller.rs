//! What [`AuthLayer`](crate::auth::AuthLayer) leaves on a request it lets through, and how the
//! layers and extractors behind it read it.

use http::Extensions;

use crate::error::Rendering;
use crate::principal::Principal;

/// Put into a request `AuthLayer` lets through without a [`Principal`], or with its rendering
/// settings when they are not the defaults: it tells the layers and extractors behind it that
/// the layer ran (no `Principal` then means an anonymous caller, not a forgotten layer) and how
/// it renders errors. A request admitted as a `Principal` with the default settings carries
/// none: the `Principal` says the layer ran, and the defaults are what the layers behind use
/// without settings.
#[derive(Clone, Debug)]
pub(crate) struct Passed {
    pub(crate) rendering: Rendering,
}

/// Who a request comes from, as the layers and extractors behind `AuthLayer` see it.
pub(crate) enum Caller<'a> {
    /// Authenticated as this principal.
    Known(&'a Principal),
    /// Let through without a credential (optional mode).
    Anonymous,
    /// No `AuthLayer` ran: the route was left unprotected by mistake.
    Unchecked,
}

impl<'a> Caller<'a> {
    pub(crate) fn of(extensions: &'a Extensions) -> Self {
        match extensions.get::<Principal>() {
            Some(p) => Self::Known(p),
            None if extensions.get::<Passed>().is_some() => Self::Anonymous,
            None => Self::Unchecked,
        }
    }
}
