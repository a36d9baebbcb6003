use std::fmt;
use std::sync::Arc;

use tower::Layer;

use super::RequireScope;
use crate::error::Rendering;

/// Requires the caller's [`Principal`](crate::Principal) to have a scope. Builds
/// [`RequireScope`] services.
///
/// A request without a `Principal` is answered 401 when [`AuthLayer`](crate::auth::AuthLayer)
/// let it through anonymously (optional mode), and 500 when no `AuthLayer` ran at all: a
/// forgotten layer must not look like an open door.
#[derive(Clone)]
#[must_use]
pub struct RequireScopeLayer {
    pub(crate) scope: Arc<str>,
    pub(crate) rendering: Rendering,
}

impl RequireScopeLayer {
    /// Requires `scope`.
    ///
    /// # Panics
    ///
    /// If `scope` is empty or has characters RFC 6749 §3.3 does not allow in a scope (space,
    /// `"`, `\`, control characters): a configuration mistake, found at start.
    pub fn new(scope: impl Into<Arc<str>>) -> Self {
        let scope = scope.into();
        assert!(
            !scope.is_empty()
                && scope
                    .bytes()
                    .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b)),
            "invalid scope {scope:?}: RFC 6749 scopes are printable ASCII without space, '\"' or '\\'"
        );
        Self {
            scope,
            rendering: Rendering::default(),
        }
    }

    fn rendering_mut(&mut self) -> &mut Rendering {
        &mut self.rendering
    }

    define_rendering_setters!(
        "By default, those of the [`AuthLayer`](crate::auth::AuthLayer) in front (or `\"api\"` \
         and the standard responder)."
    );
}

impl fmt::Debug for RequireScopeLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequireScopeLayer")
            .field("scope", &self.scope)
            .field("rendering", &self.rendering)
            .finish()
    }
}

impl<S> Layer<S> for RequireScopeLayer {
    type Service = RequireScope<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireScope::new(inner, self.clone())
    }
}
