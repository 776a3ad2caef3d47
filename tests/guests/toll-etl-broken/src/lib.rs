//! Test guest: the toll ETL with a bug. It refuses every line of a class 3
//! vehicle as a bad record, so those lines go to the dead letters; a hot swap
//! to the real `toll-etl` and a redrive put them in the warehouse.

#[path = "../../../../plugins/toll-etl/src/lib.rs"]
pub mod toll_etl;

use toll_etl::TollEtl;
use weir_sdk::{Config, Error, Outcome, Output, Record, Transformer};

/// `toll-etl`, broken for class 3.
pub struct Broken(TollEtl);

impl Transformer for Broken {
    fn init(config: &Config) -> Result<Self, String> {
        TollEtl::init(config).map(Broken)
    }

    fn transform(&mut self, record: &Record<'_>, out: &mut Output) -> Result<Outcome, Error> {
        if let Ok(t) = self.0.parse(record.payload())
            && t.vehicle_class == 3
        {
            return Err(Error::bad_record("vehicle class 3 is not in the tariff table (the bug)"));
        }
        self.0.transform(record, out)
    }
}

weir_sdk::export_transformer!(Broken);
