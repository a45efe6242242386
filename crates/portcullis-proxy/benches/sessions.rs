//! Session id speed: sealing an upstream session id into the AEAD token a client sees,
//! and opening one (target: under 5 µs each; no key derivation per call). `make bench`
//! runs these; figures go to docs/benchmarks.md.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use portcullis_proxy::sessions::{Bound, SessionSeal};

const OWNER: (&str, &str) = (
    "https://sso.example.com/realms/platform",
    "alice@example.com",
);
const BOUND: Bound<'static> = Bound {
    upstream: "github",
    route: "/github/mcp",
};
/// An rmcp-style upstream session id (a UUID).
const SID: &[u8] = b"5f0c9e4e-8d1a-4b7f-9a65-0c3e1d2b4a77";

fn bench(c: &mut Criterion) {
    let seal = SessionSeal::new(&[42u8; 32]).with_previous(&[7u8; 32]);
    c.bench_function("session seal", |b| {
        b.iter(|| seal.seal(black_box(OWNER), BOUND, "0a1b2c3d", black_box(SID)))
    });
    let id = seal.seal(OWNER, BOUND, "0a1b2c3d", SID).expect("sealed");
    c.bench_function("session open", |b| {
        b.iter(|| seal.open(black_box(OWNER), BOUND, black_box(id.as_bytes())))
    });
    let tampered = id.replacen('A', "B", 1);
    c.bench_function("session open (tampered, refused)", |b| {
        b.iter(|| seal.open(black_box(OWNER), BOUND, black_box(tampered.as_bytes())))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
