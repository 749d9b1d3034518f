//! The release link (scripts/build-release.sh) reads `build/sluice.order`, a file cargo does not
//! know about: this makes a change to it relink the binary.
fn main() {
    println!("cargo::rerun-if-changed=../build/sluice.order");
}
