using Vfio.Migration;

namespace Vfio.Simulation;

/// <summary>
/// The lower bound on downtime that simulated devices' own parameters imply (the report's <c>device_bound_ms</c>),
/// so that the engine's overhead reads as <c>downtime_ms / device_bound_ms</c>.
/// <para>Device i (source s_i paired with destination d_i) moves a stream of S_i bytes = records j = 0..n_i with
/// sizes b_ij (header included) ending at byte offsets E_ij. With d_i's load rate r_i, record j loads in
/// L_ij = b_ij / r_i (so the device loads in L_i = S_i / r_i); with s_i's save rate σ_i (0 = unlimited), record j
/// cannot be complete at the destination before E_ij / σ_i after the source stopped. Then:</para>
/// <list type="bullet">
/// <item>per device (its loads are sequential and a record cannot load before it was saved):
///   chain_i = max_j ( E_ij / σ_i + Σ_{k ≥ j} L_ik ), which is L_i when saving is unlimited;</item>
/// <item>per destination PF P with C_P concurrent loads (every record's load holds a slot for L_ij):
///   pf_P = min_{i ∈ P} E_i,first data record / σ_i + Σ_{i ∈ P} L_i^data / C_P (no data record loads before the first
///   one was saved), where L_i^data sums device i's data records only;</item>
/// <item>bound = max( max_i chain_i, max_P pf_P ) + the state transitions and config restore the simulator models,
///   which cost nothing.</item>
/// </list>
/// The simulator's PF keeps a virtual schedule in which every load occupies a slot for exactly L_ij (see
/// <see cref="SimulatedPf"/>), so a perfect engine would reach this bound up to timer slack.
/// </summary>
public static class DeviceBound
{
    /// <summary>The bound in milliseconds, or null unless every device on both sides is simulated.</summary>
    public static double? Compute(IReadOnlyList<IMigrationDevice> sources, IReadOnlyList<IMigrationDevice> destinations)
    {
        if (sources.Count == 0 || sources.Count != destinations.Count) return null;
        var src = new SimulatedDevice[sources.Count];
        var dst = new SimulatedDevice[destinations.Count];
        for (int i = 0; i < src.Length; i++)
        {
            if (sources[i] is not SimulatedDevice s || destinations[i] is not SimulatedDevice d) return null;
            src[i] = s;
            dst[i] = d;
        }
        var devices = new List<(SimulatedDeviceOptions Source, SimulatedDeviceOptions Destination, object Pf, int Concurrency)>();
        for (int i = 0; i < src.Length; i++)
            devices.Add((src[i].Options, dst[i].Options, dst[i].Pf, dst[i].Pf.ConcurrentLoads));
        return Compute(devices) * 1000;
    }

    /// <summary>One side's devices stand for both (send or receive alone: both processes are given the same simulator options).</summary>
    public static double? Compute(IReadOnlyList<IMigrationDevice> devices) => Compute(devices, devices);

    /// <summary>The bound in seconds for devices given by their parameters; devices with the same Pf object share a PF.</summary>
    public static double Compute(
        IReadOnlyList<(SimulatedDeviceOptions Source, SimulatedDeviceOptions Destination, object Pf, int Concurrency)> devices)
    {
        double bound = 0;
        var pfWork = new Dictionary<object, (double Work, double FirstSaved, int Concurrency)>(ReferenceEqualityComparer.Instance);
        foreach (var (so, d, pf, concurrency) in devices)
        {
            var records = Records(so.StateSize, so.RecordDataSize);
            double rate = d.LoadBytesPerSecond, save = so.SaveBytesPerSecond;
            double Load(long bytes) => rate > 0 ? bytes / rate : 0;
            double Saved(long end) => save > 0 ? end / save : 0;
            // chain: scan from the last record backwards, keeping the sum of the loads from j on.
            double tail = 0, chain = 0, dataLoad = 0;
            for (int j = records.Count - 1; j >= 0; j--)
            {
                tail += Load(records[j].Size);
                chain = Math.Max(chain, Saved(records[j].End) + tail);
                if (j >= 2) dataLoad += Load(records[j].Size);
            }
            bound = Math.Max(bound, chain);
            double firstSaved = Saved(records.Count > 2 ? records[2].End : so.StateSize);
            pfWork[pf] = pfWork.TryGetValue(pf, out var w)
                ? (w.Work + dataLoad, Math.Min(w.FirstSaved, firstSaved), concurrency)
                : (dataLoad, firstSaved, concurrency);
        }
        foreach (var (work, firstSaved, concurrency) in pfWork.Values)
            bound = Math.Max(bound, firstSaved + work / concurrency);
        return bound;
    }

    /// <summary>The simulated stream's records: size (header included) and the byte offset where each ends.</summary>
    public static List<(long Size, long End)> Records(long stateSize, int recordDataSize)
    {
        var (n, last) = SimStream.Layout(stateSize, recordDataSize);
        var list = new List<(long, long)>(n + 2);
        long end = 0;
        void Add(long size) { end += size; list.Add((size, end)); }
        Add(SimStream.Record0Size);
        Add(SimStream.Record1Size);
        for (int k = 0; k < n; k++)
            Add(SimStream.DataOverhead + (k == n - 1 ? last : recordDataSize));
        return list;
    }
}

/// <summary>
/// The least total time of a live migration (first device entering PRE_COPY to the last destination device running) that
/// simulated devices' own parameters imply under the engine's convergence rule (the report's <c>total_bound_ms</c>;
/// docs/protocol.md section 8 has the derivation). For n alike devices of S bytes on one destination PF, dirtying d
/// bytes/s each while they run, with the downtime limit L:
/// <list type="bullet">
/// <item>the initial images load no sooner than the device bound t1 (<see cref="DeviceBound"/>: the same stream,
///   the same loads), so each device's effective load rate is ρ = S / t1;</item>
/// <item>a region dirtied after its record began is owed once, whatever more it is dirtied; with records read evenly
///   over t1 and dirtying uniform (x = d·t1 / S), the expected bytes owed at t1 are D1 = S·(1 − (1 − e^−x) / x);</item>
/// <item>if D1 / ρ ≤ L the engine switches over at t1 and the bound is t1 + D1 / ρ (the remainder loads in the
///   downtime); any later switchover only adds the dirt meanwhile;</item>
/// <item>else the owed bytes B go down as dB/dt = d·(1 − B/S) − ρ until B = ρ·L: B(t) = B∞ + (D1 − B∞)·e^(−d·t/S) with
///   B∞ = S·(d − ρ)/d, after τ = (S/d)·ln((D1 − B∞) / (ρ·L − B∞)); the bound is t1 + τ + L. When ρ·L ≤ B∞ the
///   remainder never fits: no bound.</item>
/// </list>
/// </summary>
public static class LiveBound
{
    /// <summary>
    /// The bound in milliseconds, or null unless every device is simulated with the same options (sources and
    /// destinations alike), the destinations share one PF, and the owed bytes can fit the downtime limit.
    /// </summary>
    public static double? Compute(IReadOnlyList<IMigrationDevice> sources, IReadOnlyList<IMigrationDevice> destinations, TimeSpan downtimeLimit)
    {
        if (DeviceBound.Compute(sources, destinations) is not double t1Ms) return null;
        var first = (SimulatedDevice)sources[0];
        var pf = ((SimulatedDevice)destinations[0]).Pf;
        if (!sources.Concat(destinations).All(d => ((SimulatedDevice)d).Options == first.Options)
            || !destinations.All(d => ((SimulatedDevice)d).Pf == pf))
            return null;
        double bound = Compute(t1Ms / 1000, first.Options.StateSize, first.Options.DirtyBytesPerSecond, downtimeLimit.TotalSeconds);
        return double.IsFinite(bound) ? bound * 1000 : null;
    }

    /// <summary>
    /// The bound in seconds for devices of <paramref name="stateSize"/> bytes whose initial images load in
    /// <paramref name="initialSeconds"/> (the device bound), dirtying <paramref name="dirtyRate"/> bytes/s each;
    /// infinity when the remainder never fits <paramref name="downtimeLimitSeconds"/>.
    /// </summary>
    public static double Compute(double initialSeconds, long stateSize, double dirtyRate, double downtimeLimitSeconds)
    {
        double t1 = initialSeconds, s = stateSize, d = dirtyRate, limit = downtimeLimitSeconds;
        if (t1 <= 0 || d <= 0) return Math.Max(t1, 0);
        double rho = s / t1;
        double x = d * t1 / s;
        double owed = x < 1e-6 ? s * x / 2 : s * (1 - (1 - Math.Exp(-x)) / x);
        if (owed / rho <= limit) return t1 + owed / rho;
        double floor = s * (d - rho) / d;
        double target = rho * limit;
        if (target <= floor) return double.PositiveInfinity;
        return t1 + s / d * Math.Log((owed - floor) / (target - floor)) + limit;
    }
}
