//! fjord-sim: the deterministic simulator (under construction: see the simulator issue).

fn main() {
    eprintln!("fjord-sim: the simulator is not built yet");
    std::process::exit(2);
}
