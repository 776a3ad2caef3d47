//! `weir put`: records into a stream, from the arguments or standard input.

use base64::Engine as _;
use serde_json::json;

use crate::client::Client;

pub(super) async fn put(
    client: Client,
    stream: String,
    data: Vec<String>,
    partition_key: String,
) -> anyhow::Result<()> {
    let lines = if data.is_empty() {
        std::io::read_to_string(std::io::stdin())?.lines().filter(|l| !l.is_empty()).map(str::to_owned).collect()
    } else {
        data
    };
    let mut put = 0usize;
    for chunk in lines.chunks(crate::api::MAX_RECORDS_PER_PUT) {
        let records: Vec<_> = chunk
            .iter()
            .map(|line| json!({"Data": base64::engine::general_purpose::STANDARD.encode(line), "PartitionKey": partition_key}))
            .collect();
        let answer = client.call("PutRecords", &json!({"StreamName": stream, "Records": records})).await?;
        for (line, result) in chunk.iter().zip(answer["Records"].as_array().into_iter().flatten()) {
            match result["SequenceNumber"].as_str() {
                Some(seq) => {
                    put += 1;
                    println!("{seq}");
                }
                None => anyhow::bail!(
                    "record `{line}` was refused: {}: {}",
                    result["ErrorCode"].as_str().unwrap_or("?"),
                    result["ErrorMessage"].as_str().unwrap_or("")
                ),
            }
        }
    }
    eprintln!("put {put} record(s) into `{stream}`");
    Ok(())
}
