// ABC Tolls row enrichment, a transformer written in JavaScript: each
// warehouse row of `toll-etl` gains the name of its vehicle class and the
// region of its station (from the stage's config), for reports that group by
// them. A row that is not a toll row, or names an unknown class, is set aside
// as processing-failed with the reason.

import { log } from 'weir:plugin/log@0.2.0';
import { BatchBuilder, Config, records, text } from './weir.js';

const CLASS_NAMES = ['motorcycle', 'car', 'van', 'two-axle truck', 'three-axle truck', 'heavy truck'];

let regions = {};
let defaultRegion = 'unassigned';

export const transform = {
  init(pairs) {
    const config = new Config(pairs);
    const given = config.json('regions', {});
    if (typeof given !== 'object' || given === null || Array.isArray(given)) {
      throw `regions must be a table of station id = "region", not ${config.get('regions')}`;
    }
    for (const [station, region] of Object.entries(given)) {
      if (typeof region !== 'string') throw `regions: station ${station}'s region must be a string`;
    }
    regions = given;
    defaultRegion = config.get('default-region', 'unassigned');
    log('debug', `regions for ${Object.keys(regions).length} stations`);
  },

  transform(input) {
    const outcomes = [];
    const output = new BatchBuilder();
    for (const record of records(input)) {
      let row;
      try {
        row = JSON.parse(text(record.payload));
      } catch {
        outcomes.push({ tag: 'processing-failed', val: 'not a JSON toll row' });
        continue;
      }
      if (typeof row !== 'object' || row === null || row.station_id === undefined) {
        outcomes.push({ tag: 'processing-failed', val: 'not a toll row: no station_id' });
        continue;
      }
      const name = CLASS_NAMES[row.vehicle_class - 1];
      if (!Number.isInteger(row.vehicle_class) || name === undefined) {
        outcomes.push({ tag: 'processing-failed', val: `vehicle_class must be 1 to 6, not ${row.vehicle_class}` });
        continue;
      }
      row.vehicle_class_name = name;
      row.region = regions[String(row.station_id)] ?? defaultRegion;
      output.push(record.key, record.eventTime, JSON.stringify(row));
      outcomes.push({ tag: 'ok', val: 1 });
    }
    return { outcomes, output: output.build() };
  },
};
