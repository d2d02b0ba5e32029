//! `fjord-sim`: the simulator's command line (see the crate docs and README, "Simulator").

#[cfg(not(madsim))]
fn main() {
    eprintln!(
        "fjord-sim runs only when built with RUSTFLAGS=\"--cfg madsim\" \
         (CARGO_TARGET_DIR=target/sim).\nUse scripts/sim, e.g.: scripts/sim --seed 1"
    );
    std::process::exit(2);
}
