//! Streaming readers of a job's input: JSON lines (an id and a text field, or a KServe v2 request of
//! one row per line), CSV with a named text column, or plain text (one item per line). Each record
//! is read on its own, with a bounded line length, so memory does not grow with the input; a bad
//! record (not UTF-8, empty, malformed, too long) becomes a rejected `Record` with its reason and
//! the reading goes on. No model, no queue.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::protocol::kserve_v2;
use crate::tensor::Tensor;

/// How the input is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    /// One JSON object a line: the id and text fields, or a KServe v2 request (`inputs`).
    Jsonl,
    /// CSV with a header row; the text column and (if present) the id column are named.
    Csv,
    /// One text a line; the id is the line number.
    Text,
}

impl InputFormat {
    /// By the file's extension: `.csv`, `.txt`, else JSON lines.
    pub fn of(path: &Path) -> InputFormat {
        match path.extension().and_then(|e| e.to_str()) {
            Some("csv") => InputFormat::Csv,
            Some("txt") => InputFormat::Text,
            _ => InputFormat::Jsonl,
        }
    }

    pub fn parse(s: &str) -> Option<InputFormat> {
        match s {
            "jsonl" | "json" | "ndjson" => Some(InputFormat::Jsonl),
            "csv" => Some(InputFormat::Csv),
            "text" | "txt" => Some(InputFormat::Text),
            _ => None,
        }
    }
}

/// What to read and how.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InputSpec {
    pub format: InputFormat,
    /// The id field (JSON lines) or column (CSV); missing: the record number.
    pub id_field: String,
    /// The text field (JSON lines) or column (CSV).
    pub text_field: String,
    /// Longest record in bytes; a longer one is rejected (and skipped without being held).
    pub max_record_bytes: usize,
}

impl Default for InputSpec {
    fn default() -> Self {
        InputSpec {
            format: InputFormat::Jsonl,
            id_field: "id".into(),
            text_field: "text".into(),
            max_record_bytes: 1 << 20,
        }
    }
}

/// One input item.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Text(String),
    /// The inputs of a KServe v2 request line (one row).
    Tensors(Vec<Tensor>),
}

/// One record: its number (1-based, in input order), its id, and the item or why it was refused.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub number: u64,
    pub id: String,
    pub item: Result<Item, String>,
}

/// Counts the bytes read from the input (progress: bytes done of the file's size).
struct Counting<R> {
    inner: R,
    read: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

enum Source {
    Lines(BufReader<Counting<File>>),
    Csv {
        reader: csv::Reader<Counting<File>>,
        text: usize,
        id: Option<usize>,
    },
}

/// Reads records one at a time.
pub struct RecordReader {
    source: Source,
    spec: InputSpec,
    number: u64,
    line: Vec<u8>,
    record: csv::ByteRecord,
    /// Bytes read so far (shared with the progress display).
    pub bytes_read: Arc<AtomicU64>,
    /// The input's size in bytes.
    pub bytes_total: u64,
}

impl RecordReader {
    /// Opens `path`; `bytes_read` counts the bytes read from it (progress).
    pub fn open(
        path: &Path,
        spec: &InputSpec,
        bytes_read: Arc<AtomicU64>,
    ) -> io::Result<RecordReader> {
        let file = File::open(path)?;
        let bytes_total = file.metadata()?.len();
        let counting = Counting {
            inner: file,
            read: bytes_read.clone(),
        };
        let source = match spec.format {
            InputFormat::Jsonl | InputFormat::Text => {
                Source::Lines(BufReader::with_capacity(1 << 16, counting))
            }
            InputFormat::Csv => {
                let mut reader = csv::ReaderBuilder::new()
                    .flexible(true)
                    .from_reader(counting);
                let headers = reader.byte_headers()?.clone();
                let find = |name: &str| headers.iter().position(|h| h == name.as_bytes());
                let text = find(&spec.text_field).ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("the CSV header has no column '{}'", spec.text_field),
                    )
                })?;
                Source::Csv {
                    reader,
                    text,
                    id: find(&spec.id_field),
                }
            }
        };
        Ok(RecordReader {
            source,
            spec: spec.clone(),
            number: 0,
            line: Vec::new(),
            record: csv::ByteRecord::new(),
            bytes_read,
            bytes_total,
        })
    }

    /// Skips `n` records (resume), reading but not decoding them.
    pub fn skip(&mut self, n: u64) -> io::Result<()> {
        for _ in 0..n {
            if !self.advance()? {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the input has fewer records than the checkpoint says were done",
                ));
            }
        }
        Ok(())
    }

    /// Reads the next raw record into the buffers; false at the end.
    fn advance(&mut self) -> io::Result<bool> {
        Ok(self.read_raw()?.is_some())
    }

    /// The next raw record: `Some(overlong)`, or `None` at the end.
    fn read_raw(&mut self) -> io::Result<Option<bool>> {
        let max = self.spec.max_record_bytes;
        let got = match &mut self.source {
            Source::Lines(r) => read_line_bounded(r, &mut self.line, max)?,
            Source::Csv { reader, .. } => {
                if reader.read_byte_record(&mut self.record)? {
                    Some(self.record.as_slice().len() > max)
                } else {
                    None
                }
            }
        };
        if got.is_some() {
            self.number += 1;
        }
        Ok(got)
    }

    /// The next record, or `None` at the end of the input. I/O errors end the job; a bad record is
    /// a `Record` whose item is `Err(reason)`.
    pub fn next_record(&mut self) -> io::Result<Option<Record>> {
        let Some(overlong) = self.read_raw()? else {
            return Ok(None);
        };
        let number = self.number;
        let max = self.spec.max_record_bytes;
        if overlong {
            return Ok(Some(Record {
                number,
                id: number.to_string(),
                item: Err(format!("record is longer than {max} bytes")),
            }));
        }
        let record = match &self.source {
            Source::Lines(_) => match self.spec.format {
                InputFormat::Text => text_record(number, &self.line),
                _ => json_record(number, &self.line, &self.spec),
            },
            Source::Csv { text, id, .. } => csv_record(number, &self.record, *text, *id),
        };
        Ok(Some(record))
    }
}

/// Reads one line (without its `\n` or `\r\n`) into `buf`, keeping at most `max` bytes: `Some(true)`
/// when the line was longer (the rest is read and dropped), `None` at the end of the input.
fn read_line_bounded(
    r: &mut impl BufRead,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<Option<bool>> {
    buf.clear();
    let (mut overlong, mut any) = (false, false);
    loop {
        let chunk = r.fill_buf()?;
        if chunk.is_empty() {
            break;
        }
        any = true;
        let (part, done) = match memchr(chunk) {
            Some(i) => (&chunk[..i], i + 1),
            None => (chunk, chunk.len()),
        };
        if !overlong {
            if buf.len() + part.len() > max {
                overlong = true;
                buf.clear();
            } else {
                buf.extend_from_slice(part);
            }
        }
        let newline = done > part.len();
        r.consume(done);
        if newline {
            break;
        }
    }
    if !any {
        return Ok(None);
    }
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    Ok(Some(overlong))
}

fn memchr(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == b'\n')
}

fn utf8(number: u64, b: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(b).map_err(|e| {
        format!(
            "record {number} is not valid UTF-8 (at byte {})",
            e.valid_up_to()
        )
    })
}

fn text_item(text: &str) -> Result<Item, String> {
    if text.trim().is_empty() {
        Err("empty text".into())
    } else {
        Ok(Item::Text(text.to_string()))
    }
}

fn text_record(number: u64, line: &[u8]) -> Record {
    Record {
        number,
        id: number.to_string(),
        item: utf8(number, line).and_then(text_item),
    }
}

fn csv_record(number: u64, rec: &csv::ByteRecord, text: usize, id: Option<usize>) -> Record {
    let id = id
        .and_then(|i| rec.get(i))
        .and_then(|b| std::str::from_utf8(b).ok())
        .filter(|s| !s.is_empty())
        .map_or_else(|| number.to_string(), str::to_string);
    let item = match rec.get(text) {
        None => Err("the record has no value in the text column".into()),
        Some(b) => utf8(number, b).and_then(text_item),
    };
    Record { number, id, item }
}

/// A JSON line: `{"<id_field>": ..., "<text_field>": "..."}`, or a KServe v2 request with `inputs`
/// (its `id` is the record's id).
fn json_record(number: u64, line: &[u8], spec: &InputSpec) -> Record {
    let fallback = number.to_string();
    let text = match utf8(number, line) {
        Ok(t) => t,
        Err(e) => {
            return Record {
                number,
                id: fallback,
                item: Err(e),
            }
        }
    };
    if text.trim().is_empty() {
        return Record {
            number,
            id: fallback,
            item: Err("empty line".into()),
        };
    }
    let obj: Map<String, Value> = match serde_json::from_str(text) {
        Ok(o) => o,
        Err(e) => {
            return Record {
                number,
                id: fallback,
                item: Err(format!("not a JSON object: {e}")),
            }
        }
    };
    let id = match obj.get(&spec.id_field) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => fallback,
    };
    let item = if obj.contains_key("inputs") {
        kserve_v2::decode_request(&bytes::Bytes::copy_from_slice(line), None)
            .map(|r| Item::Tensors(r.inputs))
            .map_err(|e| e.to_string())
    } else {
        match obj.get(&spec.text_field) {
            Some(Value::String(s)) => text_item(s),
            Some(_) => Err(format!("field '{}' is not a string", spec.text_field)),
            None => Err(format!(
                "no field '{}' (nor KServe v2 'inputs')",
                spec.text_field
            )),
        }
    };
    Record { number, id, item }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn read_all(content: &[u8], spec: &InputSpec) -> Vec<Record> {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(content).unwrap();
        let mut r = RecordReader::open(f.path(), spec, Arc::default()).unwrap();
        let mut out = Vec::new();
        while let Some(rec) = r.next_record().unwrap() {
            out.push(rec);
        }
        assert_eq!(r.bytes_read.load(Ordering::Relaxed), content.len() as u64);
        out
    }

    fn items(recs: &[Record]) -> Vec<Result<String, String>> {
        recs.iter()
            .map(|r| match &r.item {
                Ok(Item::Text(t)) => Ok(format!("{}={t}", r.id)),
                Ok(Item::Tensors(t)) => Ok(format!("{}=<{} tensors>", r.id, t.len())),
                Err(e) => Err(format!("{}:{e}", r.number)),
            })
            .collect()
    }

    #[test]
    fn jsonl_reads_ids_texts_and_rejects_bad_lines() {
        let input = b"{\"id\": \"a\", \"text\": \"hello\"}\n{\"id\": 7, \"text\": \"x\"}\r\n\n{\"text\": \"\"}\n{\"id\": \"b\", \"text\": \"\xff\"}\nnot json\n{\"id\":\"c\",\"text\":3}\n{\"text\": \"last\"}";
        let recs = read_all(input, &InputSpec::default());
        let got = items(&recs);
        assert_eq!(got[0], Ok("a=hello".into()));
        assert_eq!(got[1], Ok("7=x".into()));
        assert_eq!(got[2], Err("3:empty line".into()));
        assert_eq!(got[3], Err("4:empty text".into()));
        assert!(got[4].as_ref().unwrap_err().contains("not valid UTF-8"));
        assert!(got[5]
            .as_ref()
            .unwrap_err()
            .starts_with("6:not a JSON object"));
        assert_eq!(got[6], Err("7:field 'text' is not a string".into()));
        assert_eq!(got[7], Ok("8=last".into()), "no id: the record number");
        assert_eq!(got.len(), 8);
    }

    #[test]
    fn jsonl_v2_rows_decode_with_the_online_decoder() {
        let input = br#"{"id": "r1", "inputs": [{"name": "pixels", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}
{"id": "r2", "inputs": [{"name": "pixels", "shape": [1, 2], "datatype": "FP99", "data": [1, 2]}]}
"#;
        let recs = read_all(input, &InputSpec::default());
        assert_eq!(items(&recs)[0], Ok("r1=<1 tensors>".into()));
        let e = recs[1].item.as_ref().unwrap_err();
        assert!(e.contains("pixels"), "{e}");
        assert_eq!(recs[1].id, "r2");
    }

    #[test]
    fn overlong_line_is_rejected_and_the_next_one_read() {
        let spec = InputSpec {
            max_record_bytes: 32,
            format: InputFormat::Text,
            ..InputSpec::default()
        };
        let long = "x".repeat(100_000);
        let input = format!("short\n{long}\nafter\n");
        let recs = read_all(input.as_bytes(), &spec);
        let got = items(&recs);
        assert_eq!(got[0], Ok("1=short".into()));
        assert_eq!(got[1], Err("2:record is longer than 32 bytes".into()));
        assert_eq!(got[2], Ok("3=after".into()));
    }

    #[test]
    fn csv_reads_the_named_columns() {
        let spec = InputSpec {
            format: InputFormat::Csv,
            text_field: "body".into(),
            ..InputSpec::default()
        };
        let recs = read_all(b"id,body\nq1,\"a, b\"\nq2,\n,c\n", &spec);
        let got = items(&recs);
        assert_eq!(got[0], Ok("q1=a, b".into()));
        assert_eq!(got[1], Err("2:empty text".into()));
        assert_eq!(got[2], Ok("3=c".into()));
    }

    #[test]
    fn skip_resumes_at_the_record_after() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"a\nb\nc\n").unwrap();
        let spec = InputSpec {
            format: InputFormat::Text,
            ..InputSpec::default()
        };
        let mut r = RecordReader::open(f.path(), &spec, Arc::default()).unwrap();
        r.skip(2).unwrap();
        let rec = r.next_record().unwrap().unwrap();
        assert_eq!((rec.number, rec.item), (3, Ok(Item::Text("c".into()))));
        assert!(r.next_record().unwrap().is_none());
        let mut r = RecordReader::open(f.path(), &spec, Arc::default()).unwrap();
        assert!(r.skip(4).is_err());
    }
}
