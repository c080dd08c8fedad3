package client

// Exported for the tests of package client_test, which need an in-process
// cluster from package embedded (which imports client, so they cannot live
// in package client).

// WaitFrees waits for the frees of replaced cells that c has in flight.
func (c *Client) WaitFrees() { c.bg.Wait() }
