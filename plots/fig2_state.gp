# fig2_state.gp: Figure 2, recall against state size: MQAR test accuracy
# against the floats a model keeps per sequence (log x), one line per mixer
# (points ordered by state size; the widths of the sweep), mean over seeds at
# the best learning rate with min-max bars. dir_extra adds series drawn the
# same way (the slot bottleneck, from figure 3's sweep).
load 'common.gp'
if (!exists("dir_extra")) dir_extra = ''
extra = dir_extra eq '' ? '' : labels_in(dir_extra . '/series.txt')
n_extra = words(extra)
width = 760
height = 520

do for [fmt in formats] {
    eval term_cmd(fmt)
    set output out . '.' . fmt
    eval set_caption
    set title 'MQAR: recall against state size (floats per sequence, all layers)'
    set logscale x 10
    # the data's range, not the enclosing decades
    set autoscale xfix
    set offsets graph 0.04, graph 0.04, 0, 0
    set format x '%.0e'
    set yrange [0:1.05]
    set xlabel 'state size (model/state_size)'
    set ylabel 'test accuracy'
    set bmargin 6
    set key outside right top box
    plot for [j = 1:n_series] datafile(1, j) using 1:2:4:5 with yerrorlines lw 1.5 \
            lc rgb colour(j) pt ptype(j) title label_of(word(series, j)), \
         for [j = 1:n_extra] datafile_in(dir_extra, 1, j) using 1:2:4:5 with yerrorlines lw 1.5 \
            lc rgb colour(n_series + j) pt ptype(n_series + j) title label_of(word(extra, j)) . ' (k slots)'
    unset output
}
