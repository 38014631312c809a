//! The split of a product's weight rows over candle's persistent barrier pool, the pool
//! candle's own quantized products use.

use candle_core::utils::barrier_pool;

/// A product's destination: `[activation rows, weight rows]`, row-major.
struct Destination(*mut f32);
// SAFETY: each (activation row, weight row) element is written by exactly one thread: the pool
// hands every weight row to one thread.
unsafe impl Sync for Destination {}

/// `outs[i][t * rows[i] + r + c] = values[c * x_rows + t]` where `rows_of(i, r, values)` fills
/// `values` for `values.len() / x_rows` (at most `at_once * unit`) rows of matrix `i` from row
/// `r`, each times every input row: split by weight rows (every matrix's in turn, in whole
/// units of `unit` rows, which divide every matrix's rows) over the pool, each weight row met
/// once.
pub(crate) fn for_each_row(
    rows: &[usize],
    unit: usize,
    x_rows: usize,
    at_once: usize,
    outs: &mut [&mut [f32]],
    rows_of: impl Fn(usize, usize, &mut [f32]) + Sync,
) {
    assert_eq!(rows.len(), outs.len(), "a destination per matrix");
    let mut starts = Vec::with_capacity(rows.len());
    let mut total = 0;
    for (&n, out) in rows.iter().zip(outs.iter()) {
        assert_eq!(out.len(), x_rows * n, "the destination's length");
        assert!(
            n.is_multiple_of(unit),
            "{n} rows are not whole units of {unit}"
        );
        starts.push(total);
        total += n / unit;
    }
    let units: Vec<usize> = rows.iter().map(|n| n / unit).collect();
    let destinations: Vec<Destination> = outs
        .iter_mut()
        .map(|out| Destination(out.as_mut_ptr()))
        .collect();
    let (destinations, starts, units) = (&destinations, &starts, &units);
    barrier_pool().execute_chunked(total, |chunk| {
        let mut values = vec![0.0; at_once * unit * x_rows];
        let mut i = starts.partition_point(|start| *start <= chunk.start) - 1;
        let mut global = chunk.start;
        while global < chunk.end {
            if global == starts[i] + units[i] {
                i += 1;
                continue;
            }
            let u = global - starts[i];
            let count = at_once.min(chunk.end - global).min(units[i] - u);
            let (r, values) = (u * unit, &mut values[..count * unit * x_rows]);
            rows_of(i, r, values);
            let destination = destinations[i].0;
            let columns = count * unit;
            // Row by row of the destination, so that its writes are runs of `columns` values.
            for t in 0..x_rows {
                // SAFETY: in bounds (asserted above), and these `count` units of rows are this
                // thread's alone.
                let row = unsafe {
                    std::slice::from_raw_parts_mut(destination.add(t * rows[i] + r), columns)
                };
                for (c, out) in row.iter_mut().enumerate() {
                    *out = values[c * x_rows + t];
                }
            }
            global += count;
        }
    });
}
