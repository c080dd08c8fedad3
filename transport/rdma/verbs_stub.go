//go:build !(linux && cgo && rdma)

package rdma

// Supported reports whether this build has the verbs shim.
const Supported = false

// Devices fails: this build has no verbs shim.
func Devices() ([]DeviceInfo, error) { return nil, errNoRDMA }

// Device is an opened RDMA device; this build cannot open one.
type Device struct{}

// OpenDevice fails with an error wrapping engine.ErrNotSupported.
func OpenDevice(string) (*Device, error) { return nil, errNoRDMA }

func (d *Device) Name() string                         { return "" }
func (d *Device) Emulated() bool                       { return false }
func (d *Device) Port() PortInfo                       { return PortInfo{} }
func (d *Device) ReadDepth() ReadDepth                 { return ReadDepth{} }
func (d *Device) Close() error                         { return nil }
func (d *Device) Register([]byte, Access) (*MR, error) { return nil, errNoRDMA }
func (d *Device) RegisterDmabuf(int, uint64, uint64, uint64, Access) (*MR, error) {
	return nil, errNoRDMA
}
func (d *Device) NewCQ(int) (*CQ, error)                                 { return nil, errNoRDMA }
func (d *Device) NewPreparedQP(*CQ, QPCaps, uint32) (*PreparedQP, error) { return nil, errNoRDMA }
func (d *Device) InjectFault(int, int, int, int) error                   { return errNoRDMA }

// MR is a memory registration.
type MR struct {
	Addr       uintptr
	Len        int
	LKey, RKey uint32
}

func (m *MR) Close() error { return nil }

// CQ is a completion queue.
type CQ struct{}

func (q *CQ) Poll([]WC) (int, error) { return 0, errNoRDMA }
func (q *CQ) Close() error           { return nil }

// QPCaps sizes a queue pair.
type QPCaps struct{ MaxWR, MaxSGE uint32 }

// HandshakeOpts tunes the RTR and RTS transitions.
type HandshakeOpts struct {
	Access    Access
	MTU       int
	Timeout   uint8
	RetryCnt  uint8
	ReadDepth ReadDepth
}

// PreparedQP is a queue pair before its handshake.
type PreparedQP struct{}

func (p *PreparedQP) Endpoint() Endpoint                             { return Endpoint{} }
func (p *PreparedQP) Handshake(Endpoint, HandshakeOpts) (*QP, error) { return nil, errNoRDMA }
func (p *PreparedQP) Close() error                                   { return nil }

// QP is a connected queue pair.
type QP struct{}

func (q *QP) QPN() uint32                    { return 0 }
func (q *QP) Post([]WR, []SGE) (int, error)  { return 0, errNoRDMA }
func (q *QP) Fail() error                    { return errNoRDMA }
func (q *QP) State() (int, error)            { return 0, errNoRDMA }
func (q *QP) ReadDepth() (ReadDepth, error)  { return ReadDepth{}, errNoRDMA }
func (q *QP) Timeout() (uint8, uint8, error) { return 0, 0, errNoRDMA }
func (q *QP) Close() error                   { return nil }

// EmuCounts reports the emulated device's live objects.
type EmuCounts struct{ Contexts, PDs, MRs, CQs, QPs, RemoteMaps int }

// SetEmulatedReadDepth fails: this build has no emulated device.
func SetEmulatedReadDepth(string, ReadDepth) error { return errNoRDMA }

// EmulatedCounts reports nothing in this build.
func EmulatedCounts() EmuCounts { return EmuCounts{} }
