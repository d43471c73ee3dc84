//! Calls calc_server: `cargo run -p foorpc --example calc_client -- tcp://127.0.0.1:5555`

use foorpc::{Client, Error, Value};

fn main() -> Result<(), Error> {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "tcp://127.0.0.1:5555".into());
    let client = Client::connect(&address)?;

    let sum: i64 = client.call("add", (1, 2))?;
    println!("add(1, 2) = {sum}");

    let echoed = client.call_value("echo", &[Value::Binary(vec![0, 1, 2])], None)?;
    println!("echo(b'\\x00\\x01\\x02') = {echoed}");

    match client.call::<Value>("fail", ("boom",)) {
        Err(Error::Remote(e)) => println!("fail('boom') -> remote error {e}"),
        other => println!("fail('boom') -> unexpected {other:?}"),
    }

    let pending = client.call_async("add", &[Value::from(40), Value::from(2)], None)?;
    println!("add(40, 2) asynchronously = {}", pending.wait()?);
    client.notify("log", &[Value::from("calc_client done")])?;
    Ok(())
}
