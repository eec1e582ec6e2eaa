ALTER TABLE event_log ALTER COLUMN data TYPE jsonb USING data::jsonb;
