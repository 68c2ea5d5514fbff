//! gannet's VM lab: qemu guests booted from the image `vm-images/build` makes, joined by an L2
//! network that exists only inside a network namespace of the lab's own, with gannet running
//! in them as on real nodes.

#![expect(
    unused_crate_dependencies,
    reason = "the library is the protocol both binaries share; the rest is theirs"
)]

pub mod proto;
