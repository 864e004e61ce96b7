package litefs_test

import (
	"database/sql"
	"log"

	"github.com/litefs-project/litefs"
)

// A replica writes by taking the HALT lock: the node borrows the primary's
// write lock, and each commit reaches the primary before it returns.
func ExampleWithHalt() {
	db, err := sql.Open("sqlite3", "/litefs/app.db")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	err = litefs.WithHalt("/litefs/app.db", func() error {
		_, err := db.Exec(`INSERT INTO visits (at) VALUES (datetime('now'))`)
		return err
	})
	if err != nil {
		log.Fatal(err)
	}
}
