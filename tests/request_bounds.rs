//! The size limits come before the work: an oversized credential is refused before it is
//! decoded or copied, so a large hostile request costs no more memory than a small one.
//!
//! Its own test binary, because it installs a counting global allocator.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use common::*;
use http::StatusCode;
use keygate::auth::AuthLayer;

/// Counts the bytes allocated on the current thread while counting is on.
struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATED: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is passed on to the system allocator unchanged; the thread-locals are
// `const`-initialised cells, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATED.with(|a| a.set(a.get() + layout.size()));
        }
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATED.with(|a| a.set(a.get() + new_size));
        }
        // SAFETY: the caller's contract is passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The bytes allocated on this thread while `f` runs to completion.
async fn allocated_by<F: Future>(f: F) -> (F::Output, usize) {
    ALLOCATED.with(|a| a.set(0));
    COUNTING.with(|c| c.set(true));
    let out = f.await;
    COUNTING.with(|c| c.set(false));
    (out, ALLOCATED.with(Cell::get))
}

/// The bytes the layer allocates to refuse `uri` as too long (a current-thread runtime, so the
/// whole request runs on this thread).
async fn cost_of_refusing(uri: &str) -> usize {
    let (store, _key) = store_with_key();
    cost_with(AuthLayer::new(store).realm(REALM), uri).await
}

async fn cost_with(layer: AuthLayer, uri: &str) -> usize {
    let app = routes().layer(layer);
    let req = get_req(uri);
    let (reply, bytes) = allocated_by(send(app, req)).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{uri:.60}");
    assert_eq!(
        reply.json()["detail"],
        "The credential is too long.",
        "{uri:.60}"
    );
    bytes
}

#[tokio::test]
async fn an_oversized_query_credential_is_refused_without_decoding_it() {
    // Just over the limit, and 60 KB of escapes: refusing either costs the same, because
    // neither is decoded (decoding the large one would allocate its size twice over).
    let small = cost_of_refusing(&format!("/me?key={}", "%41".repeat(513))).await;
    let large = cost_of_refusing(&format!("/me?key={}", "%41".repeat(20_000))).await;
    let plus = cost_of_refusing(&format!("/me?q=London&key={}", "a+".repeat(30_000))).await;
    assert!(large < 16 * 1024, "refusing 60 KB allocated {large} bytes");
    assert!(plus < 16 * 1024, "refusing 60 KB allocated {plus} bytes");
    assert!(
        large <= small + 1024,
        "60 KB cost {large} bytes, 1.5 KB cost {small}"
    );
}

/// With a JWT verifier the credential limit is a token's (8 KiB), so 24 KiB of escapes pass the
/// raw bound; their decoded length is counted first, and they are still refused unallocated.
#[tokio::test]
async fn an_oversized_escaped_value_is_refused_without_decoding_it_with_jwts_too() {
    let (store, _key) = store_with_key();
    let verifier = keygate::jwt::JwtVerifier::with_keys([keygate::jwt::JwtKey::hmac(
        b"a test secret of at least 32 bytes!!",
    )]);
    let layer = AuthLayer::new(store).jwt(verifier).realm(REALM);
    let bytes = cost_with(layer, &format!("/me?key={}", "%41".repeat(8 * 1024 + 1))).await;
    assert!(bytes < 16 * 1024, "refusing 24 KB allocated {bytes} bytes");
}
