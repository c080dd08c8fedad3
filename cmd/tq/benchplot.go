package main

// The chart of `tq bench --plot`: one panel per transport, stacked; in each
// a group of bars per workload and case — put, get, get_copy, total and
// the transport's baseline. A view get (shm: it copies nothing, so it is
// far above the rest) is cut at the panel's top and
// labelled with its value, so the others stay readable.

import (
	"fmt"
	"math"
	"os"
	"path/filepath"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"

	"github.com/tqgo/tq/bench"
)

// plotResults draws the results that ran into a PNG file.
func plotResults(path string, results []bench.Result) error {
	if filepath.Ext(path) != ".png" {
		return fmt.Errorf("%s: only .png is supported", path)
	}
	var transports []string
	byTr := map[string][]bench.Result{}
	for _, r := range results {
		if r.Skipped != "" {
			continue
		}
		if _, ok := byTr[r.Transport]; !ok {
			transports = append(transports, r.Transport)
		}
		byTr[r.Transport] = append(byTr[r.Transport], r)
	}
	if len(transports) == 0 {
		return fmt.Errorf("nothing ran, nothing to draw")
	}
	var panels [][]*plot.Plot
	for _, tr := range transports {
		p, err := plotPanel(tr, byTr[tr])
		if err != nil {
			return err
		}
		panels = append(panels, []*plot.Plot{p})
	}
	const panelH = 3 * vg.Inch
	w, h := 9*vg.Inch, panelH*vg.Length(len(panels))
	img := vgimg.NewWith(vgimg.UseWH(w, h), vgimg.UseDPI(110))
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: len(panels), Cols: 1, PadX: vg.Millimeter, PadY: 4 * vg.Millimeter,
		PadTop: 2 * vg.Millimeter, PadBottom: 2 * vg.Millimeter, PadLeft: 2 * vg.Millimeter, PadRight: 2 * vg.Millimeter}
	canvases := plot.Align(panels, tiles, dc)
	for i := range panels {
		panels[i][0].Draw(canvases[i][0])
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func plotPanel(tr string, rs []bench.Result) (*plot.Plot, error) {
	base, _ := rs[0].Baseline()
	series := []struct {
		name string
		val  func(bench.Result) float64
	}{
		{"put", func(r bench.Result) float64 { return r.Put.Median }},
		{"get", func(r bench.Result) float64 { return r.Get.Median }},
		{"get_copy", func(r bench.Result) float64 { return r.GetCopy.Median }},
		{"total", func(r bench.Result) float64 { return r.Total.Median }},
		{base, func(r bench.Result) float64 { _, b := r.Baseline(); return b }},
	}
	// The top: room above every bar but views (the legend sits in the top
	// right corner).
	var most float64
	for _, r := range rs {
		for _, s := range series {
			if s.name != "get" || r.GetKind != "view" {
				most = max(most, s.val(r))
			}
		}
	}
	top := most * 1.5

	p := plot.New()
	title := fmt.Sprintf("%s — GB/s, baseline %s", tr, base)
	if rs[0].GetKind == "view" {
		title += "; get returns views (no copy)"
	}
	p.Title.Text = title
	p.Y.Label.Text = "GB/s"
	p.Y.Min, p.Y.Max = 0, top
	p.Legend.Top = true
	p.Legend.TextStyle.Font.Size = vg.Points(8)
	names := make([]string, len(rs))
	for i, r := range rs {
		names[i] = r.Workload + " " + r.Case
	}
	p.NominalX(names...)
	p.X.Min, p.X.Max = -0.7, float64(len(rs))-0.3

	width := vg.Points(14)
	for si, s := range series {
		offset := width * vg.Length(si-len(series)/2)
		vals := make(plotter.Values, len(rs))
		var clipped plotter.XYLabels
		for i, r := range rs {
			v := s.val(r)
			if v > top {
				clipped.XYs = append(clipped.XYs, plotter.XY{X: float64(i), Y: top * 0.9})
				clipped.Labels = append(clipped.Labels, fmt.Sprintf("%.0f", v))
				v = top
			}
			vals[i] = v
		}
		bars, err := plotter.NewBarChart(vals, width)
		if err != nil {
			return nil, err
		}
		bars.Color = plotutil.Color(si)
		bars.LineStyle.Width = 0
		bars.Offset = offset
		p.Add(bars)
		p.Legend.Add(s.name, bars)
		if len(clipped.XYs) > 0 {
			labels, err := plotter.NewLabels(clipped)
			if err != nil {
				return nil, err
			}
			for i := range labels.TextStyle {
				labels.TextStyle[i].XAlign = draw.XCenter
				labels.TextStyle[i].Rotation = math.Pi / 2
			}
			labels.Offset = vg.Point{X: offset}
			p.Add(labels)
		}
	}
	grid := plotter.NewGrid()
	grid.Vertical.Color = nil
	p.Add(grid)
	return p, nil
}
