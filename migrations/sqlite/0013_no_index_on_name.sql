-- No query reads collectors by `name`: the text search matches anywhere in it (LIKE '%…%'), and
-- sorting by name sorts the display name label before it. The index only cost every record
-- write: SQLite deletes and inserts a row's entry in every index whose column the UPDATE sets,
-- changed or not, and the entries of a write's collectors fall on pages all over the index.
DROP INDEX collectors_name;
