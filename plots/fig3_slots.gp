# fig3_slots.gp: Figure 3, slot-count scaling: test loss and test accuracy
# against the number of slots k (log-log; linear y when a mean is 0), the mean over seeds with min-max
# bars, and the power law y = a k^b fitted by memlab fit to every run (all
# seeds) and stored in the fits table: the line and "b = ... +- ..." are the
# stored numbers (dir/fit_loss.dat, dir/fit_accuracy.dat: "group b b_err a n").
# gnuplot's own fit of the same rows (log-log least squares) is printed next
# to it as a check: the two must agree.
load 'common.gp'
width = 1000
height = 460
# gnuplot's fit of log y = log a + b log k on the same rows (finished, y > 0)
# where memlab fit stored one from at least 3 of them
rows = dir . '/export.csv'
array ys[2] = ['loss', 'accuracy']
array ylabels[2] = ['test loss (nats)', 'test accuracy']
set fit errorvariables
set datafile separator ','
set datafile columnheaders
array gfit_b[2] = [NaN, NaN]
array gfit_e[2] = [NaN, NaN]
array ycol[2] = ['test/loss', 'test/accuracy']
do for [p = 1:2] {
    n_fit = field(sprintf('%s/fit_%s.dat', dir, ys[p]), 1, 5)
    if (n_fit eq '') { n_fit = '0' }
    if (int(n_fit) >= 3) {
        gla = 0.1; gb = p == 1 ? -0.2 : 0.2
        fit gla + gb * x rows using (log(column('model.slots'))):(strcol('status') eq 'finished' && column(ycol[p]) > 0 ? log(column(ycol[p])) : NaN) via gla, gb
        gfit_b[p] = gb; gfit_e[p] = gb_err
    }
}
set datafile separator whitespace
set datafile nocolumnheaders

do for [fmt in formats] {
    eval term_cmd(fmt)
    set output out . '.' . fmt
    set multiplot layout 1, 2 title 'Slot bottleneck: scaling with the number of slots k (log-log)' \
        margins 0.08, 0.98, 0.2, 0.86 spacing 0.09, 0
    do for [p = 1:2] {
        if (p == 1) { eval set_caption } else { unset label 100 }
        f = sprintf('%s/fit_%s.dat', dir, ys[p])
        stored = field(f, 1, 2) ne ''
        b = stored ? real(field(f, 1, 2)) : NaN
        berr = stored ? real(field(f, 1, 3)) : NaN
        a = stored ? real(field(f, 1, 4)) : NaN
        law(k) = stored ? a * k**b : NaN
        set title ylabels[p]
        data = sprintf('%s/%s/p1_s1.dat', dir, ys[p])
        # log y needs every mean > 0 (an untrained model can score 0)
        set autoscale xy
        unset logscale
        stats data using 4:5 nooutput
        set logscale x 2
        # headroom above the data for the key
        if (STATS_min_x > 0) { set logscale y 2; set yrange [STATS_min_x / 1.5 : STATS_max_y * 5] } \
        else { unset logscale y; set yrange [0 : STATS_max_y * 1.6 + 1e-3] }
        set xlabel 'slots k'
        set ylabel ylabels[p]
        set key top right Left reverse samplen 2 box opaque font ',9'
        plot data using 1:2:4:5 with yerrorbars lc rgb colour(1) pt 7 \
                title 'mean over seeds, bars min to max', \
             law(x) with lines lw 2 dt 2 lc rgb colour(2) \
                title (stored ? sprintf("memlab fit, stored: %.3g k^b, b = %.3f ± %.3f", a, b, berr) : 'memlab fit: too few points'), \
             NaN with lines lc rgb '#ffffff' title sprintf("gnuplot fit, same runs: b = %.3f ± %.3f", gfit_b[p], gfit_e[p])
    }
    unset multiplot
    unset output
}
