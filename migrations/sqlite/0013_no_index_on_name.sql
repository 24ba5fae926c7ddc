-- No query reads collectors by `name`: the text search matches anywhere in it (LIKE '%…%'), and
-- sorting by name sorts the display name label before it. The index only cost every record
-- write: SQLite deletes and inserts a row's entry in every index whose column the UPDATE sets,
-- changed or not, and each collector's entry sits on a page of its own.
DROP INDEX collectors_name;
