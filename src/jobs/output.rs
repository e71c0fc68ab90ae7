//! Writers of a job's output, chosen by the output file's extension: Parquet (an `id` column and one
//! fixed-size list of float32 per model output), `.npy` (float32 `[rows, width]` of one output, ids
//! in a sidecar `<stem>.ids.jsonl`, one JSON string a line), or JSON lines. Output is written in
//! parts (a Parquet file cannot be appended to after a kill); `merge` streams the parts into the
//! final file at the end, one part in memory at a time. No model, no queue.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, FixedSizeListArray, Float32Array, RecordBatch, StringArray};
use arrow_schema::{DataType as ArrowType, Field, Schema, SchemaRef};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

/// Rows per Parquet row group (bounds the writer's buffer: 8192 x 384 floats = 12 MiB).
const ROW_GROUP_ROWS: usize = 8192;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    Parquet,
    Npy,
    Jsonl,
}

impl OutputFormat {
    /// By the file's extension: `.parquet`, `.npy`, `.jsonl` (or `.ndjson`, `.json`).
    pub fn of(path: &Path) -> Result<OutputFormat, String> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("parquet") => Ok(OutputFormat::Parquet),
            Some("npy") => Ok(OutputFormat::Npy),
            Some("jsonl" | "ndjson" | "json") => Ok(OutputFormat::Jsonl),
            _ => Err(format!(
                "cannot tell the output format of {}: use .parquet, .npy or .jsonl",
                path.display()
            )),
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            OutputFormat::Parquet => "parquet",
            OutputFormat::Npy => "npy",
            OutputFormat::Jsonl => "jsonl",
        }
    }
}

/// The model outputs a job writes: names and float32 elements per row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Columns {
    pub names: Vec<String>,
    pub widths: Vec<usize>,
    /// A text (embedding) model: JSON lines are `{"id", "<output>": [...]}` rather than
    /// `{"id", "outputs": {...}}`.
    pub text_model: bool,
}

/// The rows of one part, in input order: ids, and per column the rows' values back to back.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PartRows {
    pub ids: Vec<String>,
    pub values: Vec<Vec<f32>>,
}

impl PartRows {
    pub fn new(columns: usize) -> PartRows {
        PartRows {
            ids: Vec::new(),
            values: vec![Vec::new(); columns],
        }
    }
}

/// The ids sidecar of an `.npy` output: `embeddings.npy` -> `embeddings.ids.jsonl`.
pub fn ids_sidecar(npy: &Path) -> PathBuf {
    npy.with_extension("ids.jsonl")
}

fn schema(cols: &Columns) -> SchemaRef {
    let mut fields = vec![Field::new("id", ArrowType::Utf8, false)];
    for (name, &w) in cols.names.iter().zip(&cols.widths) {
        let item = Arc::new(Field::new("item", ArrowType::Float32, true));
        fields.push(Field::new(
            name,
            ArrowType::FixedSizeList(item, w as i32),
            false,
        ));
    }
    Arc::new(Schema::new(fields))
}

fn parquet_props() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .build()
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// Writes one part to `path` (and, for `.npy`, its ids to `ids_sidecar(path)`), flushed to disk.
pub fn write_part(
    format: OutputFormat,
    cols: &Columns,
    rows: &PartRows,
    path: &Path,
) -> io::Result<()> {
    match format {
        OutputFormat::Parquet => {
            let schema = schema(cols);
            let file = File::create(path)?;
            let mut w = ArrowWriter::try_new(file, schema.clone(), Some(parquet_props()))
                .map_err(io_err)?;
            let mut columns: Vec<ArrayRef> =
                vec![Arc::new(StringArray::from_iter_values(rows.ids.iter()))];
            for (i, &width) in cols.widths.iter().enumerate() {
                let item = Arc::new(Field::new("item", ArrowType::Float32, true));
                let values = Arc::new(Float32Array::from(rows.values[i].clone()));
                let list = FixedSizeListArray::try_new(item, width as i32, values, None)
                    .map_err(io_err)?;
                columns.push(Arc::new(list));
            }
            let batch = RecordBatch::try_new(schema, columns).map_err(io_err)?;
            w.write(&batch).map_err(io_err)?;
            let file = w.into_inner().map_err(io_err)?;
            file.sync_all()
        }
        OutputFormat::Npy => {
            let mut f = BufWriter::new(File::create(path)?);
            f.write_all(&npy_header(rows.ids.len(), cols.widths[0]))?;
            for v in &rows.values[0] {
                f.write_all(&v.to_le_bytes())?;
            }
            sync(f)?;
            let mut ids = BufWriter::new(File::create(ids_sidecar(path))?);
            for id in &rows.ids {
                serde_json::to_writer(&mut ids, id)?;
                ids.write_all(b"\n")?;
            }
            sync(ids)
        }
        OutputFormat::Jsonl => {
            let mut f = BufWriter::new(File::create(path)?);
            for (r, id) in rows.ids.iter().enumerate() {
                json_line(&mut f, cols, id, |c| {
                    let w = cols.widths[c];
                    &rows.values[c][r * w..(r + 1) * w]
                })?;
            }
            sync(f)
        }
    }
}

fn sync(w: BufWriter<File>) -> io::Result<()> {
    w.into_inner().map_err(|e| e.into_error())?.sync_all()
}

/// One output line: `{"id": .., "<output>": [..]}` for a text model, else
/// `{"id": .., "outputs": {"<output>": [..], ..}}`.
fn json_line<'a>(
    out: &mut impl Write,
    cols: &Columns,
    id: &str,
    row: impl Fn(usize) -> &'a [f32],
) -> io::Result<()> {
    let mut map = serde_json::Map::new();
    map.insert("id".into(), id.into());
    let values = |c: usize| serde_json::Value::from(row(c).to_vec());
    if cols.text_model {
        map.insert(cols.names[0].clone(), values(0));
    } else {
        let outs = (0..cols.names.len())
            .map(|c| (cols.names[c].clone(), values(c)))
            .collect();
        map.insert("outputs".into(), serde_json::Value::Object(outs));
    }
    serde_json::to_writer(&mut *out, &map)?;
    out.write_all(b"\n")
}

/// The header of an `.npy` file (version 1.0) of float32 `[rows, width]`, padded to 64 bytes.
fn npy_header(rows: usize, width: usize) -> Vec<u8> {
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {width}), }}");
    // Room for the largest row count, so that the header length never depends on it.
    let mut body = format!("{dict:<118}");
    let total = 10 + body.len() + 1;
    let pad = total.div_ceil(64) * 64 - total;
    body.push_str(&" ".repeat(pad));
    body.push('\n');
    let mut h = b"\x93NUMPY\x01\x00".to_vec();
    h.extend_from_slice(&(body.len() as u16).to_le_bytes());
    h.extend_from_slice(body.as_bytes());
    h
}

/// Rows of an `.npy` part written by `write_part` (its header's shape).
fn npy_rows(path: &Path) -> io::Result<(usize, u64)> {
    let mut f = File::open(path)?;
    let mut pre = [0u8; 10];
    f.read_exact(&mut pre)?;
    let len = u16::from_le_bytes([pre[8], pre[9]]) as usize;
    let mut dict = vec![0u8; len];
    f.read_exact(&mut dict)?;
    let dict = String::from_utf8_lossy(&dict);
    let rows = dict
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| io_err(format!("{}: not an npy part", path.display())))?;
    Ok((rows, (10 + len) as u64))
}

/// Streams the parts, in order, into `out` (written beside it, then renamed into place); `.npy`
/// gets its ids sidecar too. Returns the rows written.
pub fn merge(
    format: OutputFormat,
    cols: &Columns,
    parts: &[PathBuf],
    out: &Path,
) -> io::Result<u64> {
    let tmp = out.with_extension(format!("{}.tmp", format.extension()));
    let mut rows = 0u64;
    match format {
        OutputFormat::Parquet => {
            let file = File::create(&tmp)?;
            let mut w =
                ArrowWriter::try_new(file, schema(cols), Some(parquet_props())).map_err(io_err)?;
            for p in parts {
                let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(p)?)
                    .map_err(io_err)?
                    .with_batch_size(ROW_GROUP_ROWS)
                    .build()
                    .map_err(io_err)?;
                for batch in reader {
                    let batch = batch.map_err(io_err)?;
                    rows += batch.num_rows() as u64;
                    w.write(&batch).map_err(io_err)?;
                }
            }
            w.into_inner().map_err(io_err)?.sync_all()?;
        }
        OutputFormat::Npy => {
            let mut counts = Vec::with_capacity(parts.len());
            for p in parts {
                let (n, data_at) = npy_rows(p)?;
                rows += n as u64;
                counts.push(data_at);
            }
            let mut f = BufWriter::new(File::create(&tmp)?);
            f.write_all(&npy_header(rows as usize, cols.widths[0]))?;
            for (p, &data_at) in parts.iter().zip(&counts) {
                let mut src = File::open(p)?;
                io::copy(&mut (&mut src).take(data_at), &mut io::sink())?;
                io::copy(&mut src, &mut f)?;
            }
            sync(f)?;
            let ids_tmp = tmp.with_extension("ids.tmp");
            let mut ids = BufWriter::new(File::create(&ids_tmp)?);
            for p in parts {
                io::copy(&mut File::open(ids_sidecar(p))?, &mut ids)?;
            }
            sync(ids)?;
            std::fs::rename(&ids_tmp, ids_sidecar(out))?;
        }
        OutputFormat::Jsonl => {
            let mut f = BufWriter::new(File::create(&tmp)?);
            for p in parts {
                let mut r = BufReader::new(File::open(p)?);
                loop {
                    let buf = r.fill_buf()?;
                    if buf.is_empty() {
                        break;
                    }
                    rows += buf.iter().filter(|&&b| b == b'\n').count() as u64;
                    f.write_all(buf)?;
                    let n = buf.len();
                    r.consume(n);
                }
            }
            sync(f)?;
        }
    }
    std::fs::rename(&tmp, out)?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols() -> Columns {
        Columns {
            names: vec!["embedding".into()],
            widths: vec![3],
            text_model: true,
        }
    }

    fn part(ids: &[&str], start: f32) -> PartRows {
        PartRows {
            ids: ids.iter().map(|s| s.to_string()).collect(),
            values: vec![(0..ids.len() * 3).map(|i| start + i as f32).collect()],
        }
    }

    fn two_parts(format: OutputFormat, dir: &Path) -> (Vec<PathBuf>, PathBuf) {
        let ext = format.extension();
        let p1 = dir.join(format!("part-0.{ext}"));
        let p2 = dir.join(format!("part-1.{ext}"));
        write_part(format, &cols(), &part(&["a", "b"], 0.0), &p1).unwrap();
        write_part(format, &cols(), &part(&["c"], 6.0), &p2).unwrap();
        (vec![p1, p2], dir.join(format!("out.{ext}")))
    }

    #[test]
    fn npy_header_is_64_byte_aligned_and_parsable() {
        for rows in [0, 1, 1797, usize::MAX / 4] {
            let h = npy_header(rows, 384);
            assert_eq!(h.len() % 64, 0);
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("x.npy");
            std::fs::write(&p, &h).unwrap();
            assert_eq!(npy_rows(&p).unwrap(), (rows, h.len() as u64));
        }
    }

    #[test]
    fn npy_parts_merge_into_one_array_and_ids_sidecar() {
        let dir = tempfile::tempdir().unwrap();
        let (parts, out) = two_parts(OutputFormat::Npy, dir.path());
        assert_eq!(merge(OutputFormat::Npy, &cols(), &parts, &out).unwrap(), 3);
        let bytes = std::fs::read(&out).unwrap();
        let (rows, at) = npy_rows(&out).unwrap();
        assert_eq!(rows, 3);
        let vals: Vec<f32> = bytes[at as usize..]
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(vals, (0..9).map(|i| i as f32).collect::<Vec<_>>());
        let ids = std::fs::read_to_string(ids_sidecar(&out)).unwrap();
        assert_eq!(ids, "\"a\"\n\"b\"\n\"c\"\n");
    }

    #[test]
    fn jsonl_parts_merge_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (parts, out) = two_parts(OutputFormat::Jsonl, dir.path());
        assert_eq!(
            merge(OutputFormat::Jsonl, &cols(), &parts, &out).unwrap(),
            3
        );
        let text = std::fs::read_to_string(&out).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            lines[2],
            serde_json::json!({"id": "c", "embedding": [6.0, 7.0, 8.0]})
        );
        assert_eq!(lines[0]["id"], "a");
    }

    #[test]
    fn parquet_parts_merge_with_ids_and_fixed_size_lists() {
        let dir = tempfile::tempdir().unwrap();
        let (parts, out) = two_parts(OutputFormat::Parquet, dir.path());
        assert_eq!(
            merge(OutputFormat::Parquet, &cols(), &parts, &out).unwrap(),
            3
        );
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&out).unwrap())
            .unwrap()
            .build()
            .unwrap();
        let mut ids = Vec::new();
        let mut vals = Vec::new();
        for b in reader {
            let b = b.unwrap();
            assert_eq!(b.schema(), schema(&cols()));
            let id = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
            ids.extend(id.iter().map(|s| s.unwrap().to_string()));
            let l = b
                .column(1)
                .as_any()
                .downcast_ref::<FixedSizeListArray>()
                .unwrap();
            let v = l.values().as_any().downcast_ref::<Float32Array>().unwrap();
            vals.extend(v.values().iter().copied());
        }
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(vals, (0..9).map(|i| i as f32).collect::<Vec<_>>());
    }
}
