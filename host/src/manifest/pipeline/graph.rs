//! The pipeline graph: stages feeding each other through streams must not
//! form a loop.

use std::collections::BTreeSet;
use std::ops::Range;

use crate::manifest::diagnostic::{Diagnostic, Diagnostics, SourceFile};
use crate::manifest::units::Name;

use super::spec::*;

/// A stage that (through other stages) feeds its own input would loop records forever.
pub(super) fn check_cycles(
    stages: &[StageSpec],
    output_spans: &[(&SourceFile, Range<usize>)],
    diags: &mut Diagnostics,
) {
    let edges: Vec<(&Name, &Name)> = stages
        .iter()
        .filter_map(|s| match &s.output {
            Target::Stream(out) => Some((&s.input, out)),
            Target::Sink(_) | Target::Effects => None,
        })
        .collect();
    for (stage, (source, span)) in stages.iter().zip(output_spans) {
        let Target::Stream(start) = &stage.output else { continue };
        let mut seen = BTreeSet::new();
        let mut todo = vec![start];
        while let Some(stream) = todo.pop() {
            if stream == &stage.input {
                diags.push(
                    Diagnostic::new(
                        source,
                        span.clone(),
                        format!("stage `{}` feeds its own input stream `{}` (a cycle)", stage.name, stage.input),
                    )
                    .help("write the output to another stream or a sink"),
                );
                break;
            }
            if seen.insert(stream) {
                todo.extend(edges.iter().filter(|(i, _)| *i == stream).map(|(_, o)| *o));
            }
        }
    }
}
