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
