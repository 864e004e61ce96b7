package http

import (
	"fmt"

	"github.com/litefs-project/litefs/store"
)

// validateStreamNames checks every database a stream request names: its
// positions, its recent positions and its filter. A name no database can
// have is a malformed request, refused with a message naming it, rather
// than one that matches nothing.
func validateStreamNames(req StreamRequest) error {
	for name := range req.Positions {
		if err := store.ValidateName(name); err != nil {
			return fmt.Errorf("positions: %w", err)
		}
	}
	for name := range req.Recent {
		if err := store.ValidateName(name); err != nil {
			return fmt.Errorf("recent: %w", err)
		}
	}
	for _, name := range req.Databases {
		if err := store.ValidateName(name); err != nil {
			return fmt.Errorf("databases: %w", err)
		}
	}
	return nil
}
