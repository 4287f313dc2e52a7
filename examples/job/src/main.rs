//! A batch job: counts the primes below N (the first argument, default 100000), prints the count
//! and exits 0; exits 2 with a message when N is not a number.

fn main() {
    let arg = std::env::args().nth(1).unwrap_or_else(|| "100000".into());
    let Ok(n) = arg.parse::<usize>() else {
        eprintln!("primes: {arg:?} is not a whole number");
        std::process::exit(2);
    };
    let mut composite = vec![false; n.max(2)];
    let mut count = 0;
    for i in 2..n {
        if !composite[i] {
            count += 1;
            // usize is 32 bits on wasm32: i * i may not fit.
            let mut j = i.saturating_mul(i);
            while j < n {
                composite[j] = true;
                j += i;
            }
        }
    }
    let worker = std::env::var("JOB_COMPLETION_INDEX").map_or(String::new(), |i| format!(" (index {i})"));
    println!("primes below {n}: {count}{worker}");
}
